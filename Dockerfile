# The sluice binary on Debian slim. Build: docker build -t sluice .
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
# sluice reads topology/topology.yaml relative to its working directory by default.
COPY topology/topology.yaml /etc/sluice/topology/topology.yaml
WORKDIR /etc/sluice
EXPOSE 8080 9464
ENTRYPOINT []
CMD ["sluice", "doctor"]
