#!/usr/bin/env bash
# Build the GPU image from the repo's Dockerfile (run from anywhere):
#   bash scripts/docker/build.sh [image tag, default bert:latest] [extra docker build options...]
# FROM_IMAGE_NAME picks another Paddle 2.6 GPU base image, e.g.
#   FROM_IMAGE_NAME=paddlepaddle/paddle:2.6.2-gpu-cuda11.7-cudnn8.4-trt8.4 bash scripts/docker/build.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
tag=${1:-bert:latest}
shift $(( $# > 0 ? 1 : 0 ))
build_args=()
[[ -z ${FROM_IMAGE_NAME:-} ]] || build_args+=(--build-arg "FROM_IMAGE_NAME=$FROM_IMAGE_NAME")
docker build --network=host "${build_args[@]}" -t "$tag" "$@" .
