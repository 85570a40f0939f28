# explrobust dashboard: the pinned requirements.txt on Python 3.11, torch's CPU wheels by default.
#   docker build -t explrobust . && docker run --init -p 8501:8501 explrobust   (--init reaps job workers)
# CUDA: a base image that has python3.11 and pip, and torch's CUDA wheels, e.g.
#   docker build --build-arg BASE=<cuda image with python3.11 + pip> \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t explrobust:cuda .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba_cache
RUN useradd --create-home --uid 1000 explrobust
WORKDIR /app
# Owned by root and read-only for the app's user: the code and the shipped zoo (models_zoo/) cannot be
# changed from the dashboard. Uploads, trained models and jobs go to the user's home (~/.explrobust).
COPY . /app
RUN pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt
USER explrobust
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health').read()!=b'ok')"
# The same command as README's start command (scripts/start.sh), binding all interfaces explicitly:
# inside the container the published port is the only way in.
CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
