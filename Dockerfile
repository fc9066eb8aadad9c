# concord's image: one image for every process (`concord serve`, `concord publish`, `concord db
# upgrade`, `concord hie-stub`, and operators' commands through `docker compose run`).
#   docker build -t concord:local .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every dependency has a manylinux wheel (asyncpg, uvloop, httptools, orjson, cryptography): no compiler.
COPY pyproject.toml README.md ./
COPY adapters adapters
COPY mappings mappings
COPY consent consent
COPY gateway gateway
RUN python -m venv /opt/concord && /opt/concord/bin/pip install --no-compile . \
    && /opt/concord/bin/python -m compileall -q /opt/concord/lib

FROM python:3.11-slim
RUN groupadd --system --gid 10001 concord \
    && useradd --system --uid 10001 --gid concord --home-dir /var/lib/concord --shell /usr/sbin/nologin concord \
    && install -d -o concord -g concord -m 0750 /var/lib/concord
COPY --from=build /opt/concord /opt/concord
# CONCORD_DATA_DIR is only written on the embedded SQLite default; the compose stack uses PostgreSQL.
ENV PATH=/opt/concord/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONCORD_DATA_DIR=/var/lib/concord
USER concord
WORKDIR /var/lib/concord
EXPOSE 8080
ENTRYPOINT ["concord"]
CMD ["--help"]
