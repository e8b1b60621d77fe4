# syntax=docker/dockerfile:1
# Zero Balance Loss images. Three stages, two images (docker-compose.yml builds both):
#   build - compilers and headers: installs the requirements into /opt/venv, collects static files
#   nginx - nginx with nginx.conf and the collected static files (target "nginx")
#   app   - slim runtime: the virtualenv, the code, gunicorn as a non-root user (target "app", the default)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NGINX_IMAGE=nginx:1.27-alpine

FROM ${PYTHON_IMAGE} AS build
# mysqlclient compiles against MariaDB Connector/C (pkg-config finds it); none of this is in the app image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make pkg-config libmariadb-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# collectstatic only reads settings: a throwaway key and an unused Redis URL keep it from writing a
# secret into the image or starting the embedded Redis server.
RUN SECRET_KEY=collectstatic-only REDIS_URL=redis://unused:6379/0 VAR_DIR=/tmp/build-var \
    STATIC_ROOT=/app/staticfiles python manage.py collectstatic --noinput --verbosity 0

FROM ${NGINX_IMAGE} AS nginx
COPY nginx.conf /etc/nginx/nginx.conf
COPY --from=build /app/staticfiles /app/staticfiles
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD wget -q -O /dev/null http://127.0.0.1:8080/nginx-health || exit 1

FROM ${PYTHON_IMAGE} AS app
# libmariadb3: the client library mysqlclient was built against (runtime only, no headers).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmariadb3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ledger \
 && useradd --system --uid 10001 --gid ledger --home-dir /app --no-create-home ledger
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VAR_DIR=/app/var \
    STATIC_ROOT=/app/staticfiles \
    GUNICORN_BIND=0.0.0.0:8000 \
    GUNICORN_WORKER_TMP_DIR=/dev/shm
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
RUN mkdir -p /app/var && chown ledger:ledger /app/var
USER ledger
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/', timeout=4).status != 200)"]
# gunicorn is the process that receives SIGTERM (exec form, no shell in between) and shuts down gracefully.
CMD ["gunicorn", "--config", "/app/gunicorn.conf.py", "project.wsgi:application"]
