# An accelerator image of purejaxmt. Pick the jaxlib with a build argument:
#   docker build --build-arg ACCELERATOR=cuda -t purejaxmt .     # NVIDIA GPUs (CUDA 12 wheels, driver from the host)
#   docker build --build-arg ACCELERATOR=tpu  -t purejaxmt .     # Cloud TPU VMs
#   docker build --build-arg ACCELERATOR=cpu  -t purejaxmt .     # CPU only
#   docker run --gpus all -v $PWD/runs:/app/runs purejaxmt       # runs the main experiment (paper preset on a GPU)
FROM python:3.11-slim

ARG ACCELERATOR=cuda
# MUJOCO_GL=egl: MuJoCo renders headless (videos, purejaxmt.report.render) with NVIDIA's EGL where the container runtime
# mounts it (the "graphics" driver capability), else with Mesa's software EGL (libegl-mesa0, libgl1-mesa-dri).
ENV PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.9

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY purejaxmt ./purejaxmt
COPY experiments ./experiments
RUN case "$ACCELERATOR" in \
      cuda) pip install --no-cache-dir -e ".[cuda]" ;; \
      tpu)  pip install --no-cache-dir -e ".[tpu]" ;; \
      cpu)  pip install --no-cache-dir -e . ;; \
      *)    echo "ACCELERATOR must be cuda, tpu or cpu, got '$ACCELERATOR'" >&2; exit 1 ;; \
    esac

ENTRYPOINT ["python", "experiments/mjx_humanoid_mt.py"]
CMD []
