# fastsend in a container. The default command runs the reference service; compose.yaml also runs a
# sender from this image, with its spool on a volume. docs/operations.md explains the choices.
FROM python:3.12-slim

# The system's libjpeg-turbo: fastsend encodes through it when present (simplejpeg's wheel otherwise).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libturbojpeg0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fastsend ./fastsend
RUN pip install --no-cache-dir ".[metrics]" && rm -rf /src

# An unprivileged user owning the two directories that outlive the container.
RUN useradd --create-home --uid 10001 fastsend \
    && mkdir -p /data /spool \
    && chown fastsend:fastsend /data /spool
USER fastsend
WORKDIR /home/fastsend
VOLUME ["/data", "/spool"]
EXPOSE 8001

# SIGTERM is what `docker stop` sends: the service stops on it, and a sender with a spool exits as with
# sys.exit(), flushing for up to FASTSEND_EXIT_FLUSH_TIMEOUT seconds and spooling what is left. Exec-form
# commands below, so the signal reaches fastsend itself rather than a shell.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
CMD ["fastsend", "serve", "--host", "0.0.0.0", "--port", "8001", "--data-dir", "/data"]
