# kit-dev in a container: the same set-up as a fresh machine (`make setup`), serving the demo ModelKit.
#   docker build -t kit-dev . && docker run --rm -p 8000:8000 kit-dev
# To serve your own ModelKit: docker run --rm -p 8000:8000 kit-dev \
#   .venv/bin/kit-dev start --modelkit registry.example.com/org/model:tag --foreground
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake ninja-build make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/kit-dev
COPY . .
RUN make demo-kit

# In a container, loopback is unreachable from the host: bind every interface there (only there).
ENV KIT_DEV_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
CMD ["make", "demo"]
