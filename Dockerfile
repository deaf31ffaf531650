# VL-Lens as a Hugging Face Docker Space (CPU). docs/space.md explains every line.
FROM python:3.11-slim

# Spaces run the container as user 1000; its home is the writable place (the disk is ephemeral
# unless persistent storage is mounted at /data, which the start command below then uses).
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENIZERS_PARALLELISM=false \
    VL_LENS_PUBLIC=1 \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none \
    STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=none \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_XSRF_COOKIE_SAME_SITE=none
WORKDIR /home/user/app

# The runtime requirements only (no test tools). torch first, from PyTorch's CPU index: the public
# index's Linux wheel is the CUDA build with gigabytes of GPU libraries. requirements.txt then finds
# torch==2.13.0 (+cpu) already satisfied and installs the rest at its pins.
COPY --chown=user requirements.txt .
RUN pip install --user --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --user -r requirements.txt

# The code and the demo weights (demo/models/, a few MB); .dockerignore leaves out tests and tools.
COPY --chown=user . .

EXPOSE 7860
# The demo store is built on first start into $VL_LENS_CACHE: /data/vl-lens when persistent storage
# is attached (it then survives restarts), else ~/.cache/vl-lens (rebuilt after each restart).
CMD ["sh", "-c", "if [ -z \"$VL_LENS_CACHE\" ] && [ -d /data ] && [ -w /data ]; then export VL_LENS_CACHE=/data/vl-lens; fi; exec python -m streamlit run streamlit_app.py --server.port 7860 --server.address 0.0.0.0 --server.headless true"]
