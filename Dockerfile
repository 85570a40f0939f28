# explrobust dashboard. CPU wheels by default; for CUDA build with
#   --build-arg BASE=nvidia/cuda:13.0.0-runtime-ubuntu24.04   (needs python3.11 + pip in that image)
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 NUMBA_CACHE_DIR=/tmp/numba_cache
RUN useradd --create-home --uid 1000 explrobust
WORKDIR /app
COPY --chown=explrobust:explrobust . /app
RUN pip install -r requirements.txt
USER explrobust
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health').read()!=b'ok')"
# The same command as README's start command, binding all interfaces explicitly inside the container.
CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
