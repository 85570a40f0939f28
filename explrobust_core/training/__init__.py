"""Training: objectives (natural, PGD-AT, TRADES, SEP, IG-NORM, IG-SUM-NORM, ART) and a resumable trainer."""
