# Sourced by the other scripts: installs the Debian packages micache builds
# with, when any is missing (apt-get as root, or through sudo).
micache_packages=(cmake g++ make libfmt-dev libgtest-dev libbenchmark-dev nlohmann-json3-dev zlib1g-dev libxxhash-dev)

ensure_deps() {
  local missing=()
  for pkg in "${micache_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "micache: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  fi
}

# The CUDA compiler, if there is one: on PATH or in the toolkit's usual place.
find_nvcc() {
  command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true
}

# What the python preset needs beyond the C++ build: Python's headers (the
# extension compiles against them) and venv. Installed only when missing.
ensure_python_deps() {
  if python3 -c 'import ensurepip, os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    return
  fi
  echo "micache: installing python3-dev python3-venv"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-dev python3-venv
}
