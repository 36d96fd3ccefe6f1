# memd: a memcached-compatible cache node.
#   docker build -t memd . && docker run -p 11211:11211 memd -m 256
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A cache never needs root. A fixed numeric id lets Kubernetes check
# runAsNonRoot and give volumes to it (fsGroup). --create-home makes
# /home/memd the user's own under every builder: a WORKDIR that creates it
# makes it root's with Docker's classic builder, and --snapshot then cannot
# write there. data/ is where snapshot volumes are mounted; a new named
# volume copies this directory's owner.
RUN groupadd --system --gid 10001 memd \
 && useradd --system --uid 10001 --gid memd --create-home --home-dir /home/memd \
            --shell /usr/sbin/nologin memd \
 && install -d -o memd -g memd /home/memd/data

# Install from a temporary copy removed in the same step: no source tree
# (not even an empty directory) is left in the image.
COPY pyproject.toml README.md /tmp/memd-src/
COPY memd /tmp/memd-src/memd
COPY tools /tmp/memd-src/tools
RUN pip install /tmp/memd-src && rm -rf /tmp/memd-src

USER 10001:10001
WORKDIR /home/memd

EXPOSE 11211

# Speaks the protocol rather than checking the port is open: a node that
# accepts but does not answer is unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-m", "tools.probe", "127.0.0.1:11211"]

# Flags after the image name (or compose `command:`) are memcached's:
# -p -m -c -I -v, plus --cluster-nodes / --cluster-file / --cluster-dns.
ENTRYPOINT ["memd", "-l", "0.0.0.0"]
CMD ["-m", "64"]
