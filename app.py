"""explrobust dashboard entry: page config, navigation over pages/, shared sidebar (pages/navigation.py)."""

from pages.navigation import navigation

navigation().run()
