# Sourced by the other scripts: installs the Debian packages micache builds
# with, when any is missing (apt-get as root, or through sudo).
micache_packages=(cmake g++ make libfmt-dev libgtest-dev libbenchmark-dev nlohmann-json3-dev zlib1g-dev libxxhash-dev)

# Installs Debian packages $@ (apt-get as root, or through sudo).
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

ensure_deps() {
  local missing=()
  for pkg in "${micache_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "micache: installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

# The CUDA compiler, if there is one: on PATH or in the toolkit's usual place.
find_nvcc() {
  command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true
}

# What the python preset needs beyond the C++ build: Python's headers (the
# extension compiles against them) and venv, for the interpreter $1 (python3
# by default). Installed only when missing.
ensure_python_deps() {
  local python=${1:-python3}
  if "$python" -c 'import ensurepip, os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    return
  fi
  echo "micache: installing python3-dev python3-venv"
  apt_install python3-dev python3-venv
}

# PyTorch for the CPU, Debian's build for /usr/bin/python3 (python3-torch):
# the python preset's PyTorch tests and peers use it. Installed only when
# missing.
ensure_torch() {
  if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    return
  fi
  echo "micache: installing python3-torch python3-dev python3-venv"
  apt_install python3-torch python3-dev python3-venv
}
