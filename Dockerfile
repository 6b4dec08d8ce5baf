# The Postgraas server: gunicorn, as a non-root user, driving the Docker engine through a
# mounted socket (the image has no PostgreSQL binaries, so docker is its default backend). BASE_IMAGE lets CI build from a locally made Debian image (no registry there).
#
#   docker build -t postgraas-server .
#   docker run -d --network host \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     postgraas-server
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/postgraas/bin:$PATH \
    POSTGRAAS_CONFIG=/etc/postgraas/application.cfg \
    POSTGRAAS_APPLICATION_DEFAULT_BACKEND=docker

RUN python3 -m venv /opt/postgraas
# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt /src/requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt
COPY setup.py README.md /src/
COPY postgraas_server /src/postgraas_server
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps /src && rm -rf /src

COPY application.cfg /etc/postgraas/application.cfg
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/postgraas postgraas
USER postgraas
# The default SQLite meta db lands here; mount a volume to keep it.
WORKDIR /var/lib/postgraas
EXPOSE 8080
ENTRYPOINT ["postgraas-server"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
