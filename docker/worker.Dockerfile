# The worker image of `kdsweep launch k8s`: torch with CUDA, kdsweep and its PostgreSQL driver.
# Its command line is `kdsweep study worker SPEC ...`, as on any machine; the Job gives SPEC (a
# ConfigMap), the store URLs (arguments) and their passwords (a Secret, by environment).
#
#   docker build -f docker/worker.Dockerfile -t REGISTRY/kdsweep-worker:0.1 .    # from the repo root
#
# BASE: a CUDA PyTorch runtime image with torch 2.4 to 2.14.1 (kdsweep's range) whose CUDA your
# nodes' driver supports; pip keeps the torch it finds there.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 1000 kdsweep && mkdir /work && chown kdsweep /work
COPY pyproject.toml README.md /src/
COPY kdsweep /src/kdsweep
RUN pip install "/src[postgres]" && rm -rf /src
USER kdsweep
# the Job mounts /work (emptyDir, or --work-pvc so checkpoints outlive a pod)
WORKDIR /work
ENTRYPOINT []
CMD ["kdsweep", "study", "worker", "--help"]
