# tokengate image: slim, non-root, with a health check. One image, two planes:
#   data plane (default):  tokengate serve    port 8000, the public OpenAI API
#   control plane:         tokengate control  port 8001, the admin API: keep it on a private network
#   bridge (kind: litellm): tokengate bridge --cluster NAME --host 0.0.0.0 --port 9100, private too
#                          (TOKENGATE_HEALTH_PORT=9100; the provider key in its environment only)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY control ./control
COPY billing ./billing
COPY bridge ./bridge
COPY launcher ./launcher
COPY loadtest ./loadtest
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tokengate
COPY --from=build /install /usr/local
COPY models.yaml /etc/tokengate/models.yaml
ENV TOKENGATE_CONFIG=/etc/tokengate/models.yaml \
    PYTHONUNBUFFERED=1
USER tokengate
WORKDIR /home/tokengate
EXPOSE 8000 8001
# Checks whichever plane runs (both answer /healthz), on the port the command line names.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys,os; port = os.environ.get('TOKENGATE_HEALTH_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"
CMD ["tokengate", "serve", "--host", "0.0.0.0", "--port", "8000"]
