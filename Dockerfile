# GPU image for BERT pre-training and SQuAD fine-tuning: Paddle's own 2.6.2 GPU image + this repo's pins.
#   bash scripts/docker/build.sh            (docker build -t bert:latest .)
#   bash scripts/docker/launch.sh           (interactive shell, GPUs, data/results/vocab mounted)
# The base image brings CUDA 12.0, cuDNN 8.9 and paddlepaddle-gpu 2.6.2. requirements.txt pins the CPU
# wheel (paddlepaddle==2.6.2): that line is left out here, so pip never replaces the image's GPU build;
# every other pin is installed as written, and the build stops if anything changed Paddle.
# One exception, printed when it applies: the pins were measured on Python 3.11, and matplotlib 3.11
# has no wheel for an older Python; there matplotlib (used only by utils/plot_report.py) is pinned to
# 3.10.8, the last release for Python 3.10.
ARG FROM_IMAGE_NAME=paddlepaddle/paddle:2.6.2-gpu-cuda12.0-cudnn8.9-trt8.6
FROM ${FROM_IMAGE_NAME}

ENV BERT_PREP_WORKING_DIR=/workspace/bert/data/download \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends bzip2 pbzip2 pv iputils-ping \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/bert

# Dependencies first, so editing the code does not invalidate this layer.
COPY requirements.txt requirements-test.txt ./
RUN set -eux; \
    python -c "import paddle, sys; print('base image: Python', sys.version.split()[0], 'paddle', paddle.__version__)"; \
    grep -v -E '^[[:space:]]*paddlepaddle([[:space:]=<>!~;#]|$)' requirements.txt > /tmp/requirements-gpu-image.txt; \
    if ! python -c "import sys; sys.exit(sys.version_info < (3, 11))"; then \
      echo "Python < 3.11: matplotlib==3.11.2 -> matplotlib==3.10.8 (report plots only)"; \
      sed -i -E 's/^matplotlib==[^[:space:]]+/matplotlib==3.10.8/' /tmp/requirements-gpu-image.txt; \
    fi; \
    grep -v -E '^[[:space:]]*(-r|paddlepaddle)' requirements-test.txt >> /tmp/requirements-gpu-image.txt; \
    python -m pip install --no-cache-dir -r /tmp/requirements-gpu-image.txt; \
    python -c "import paddle; v = paddle.__version__; assert v.startswith('2.6.'), 'pip changed paddle to ' + v; \
assert paddle.is_compiled_with_cuda(), 'the GPU build of paddle was replaced'"

COPY . .
# The project itself, editable and without dependencies (installed above): LDDL's command names
# (preprocess_bert_pretrain, balance_dask_output, download_wikipedia, ...) become commands in the image.
RUN python -m pip install --no-cache-dir --no-deps -e .
