# tokengate gateway image: slim, non-root, with a health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY billing ./billing
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
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["tokengate", "serve", "--host", "0.0.0.0", "--port", "8000"]
