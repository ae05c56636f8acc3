# The containerized-agent server image (agent-server + the agent CLI), for machines that can pull
# from a registry:
#
#   docker build -t containerized-agent-server:latest .
#   docker compose up            # see docker-compose.yml
#
# The server starts job sandboxes on the host's Docker engine, so it needs the engine's socket
# mounted (docker-compose.yml does it). That socket is root-equivalent on the host: read
# docs/deployment.md ("Trust boundary") before exposing the server beyond localhost.
# Job containers never get the socket; they run the agent image (images/agent), not this one.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p agent-server --bins \
 && install -D -m 0755 target/release/agent-server /out/agent-server \
 && install -D -m 0755 target/release/agent /out/agent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin agent-server \
 && mkdir -p /data && chown agent-server /data
COPY --from=build /out/agent-server /out/agent /usr/local/bin/

# Listen on all interfaces inside the container; publish the port on 127.0.0.1 only unless you
# have set AGENT_API_TOKEN (see docker-compose.yml).
ENV AGENT_BIND=0.0.0.0:8000 \
    AGENT_OUTPUT_DIR=/data \
    AGENT_IMAGE=containerized-agent:latest \
    AGENT_LOG_FORMAT=json
VOLUME /data
EXPOSE 8000
# Needs to be in the group that owns /var/run/docker.sock (compose: group_add: ["${DOCKER_GID}"]).
USER agent-server
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["agent", "--url", "http://127.0.0.1:8000", "health"]
ENTRYPOINT ["agent-server"]
