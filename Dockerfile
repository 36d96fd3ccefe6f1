# memd: a memcached-compatible cache node.
#   docker build -t memd . && docker run -p 11211:11211 memd -m 256
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first, then the code: keeps the layer order obvious; the
# install itself needs both.
COPY pyproject.toml README.md ./
COPY memd ./memd
COPY tools ./tools
RUN pip install . && rm -rf /src

# A cache never needs root: run as an unprivileged system user.
RUN useradd --system --no-create-home --shell /usr/sbin/nologin memd
USER memd
WORKDIR /home/memd

EXPOSE 11211

# Speaks the protocol rather than checking the port is open: a node that
# accepts but does not answer is unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import socket,sys; s=socket.create_connection(('127.0.0.1',11211),2); s.sendall(b'version\\r\\n'); sys.exit(0 if s.recv(64).startswith(b'VERSION') else 1)"]

# Flags after the image name (or compose `command:`) are memcached's:
# -p -m -c -I -v, plus --cluster-nodes / --cluster-file.
ENTRYPOINT ["memd", "-l", "0.0.0.0"]
CMD ["-m", "64"]
