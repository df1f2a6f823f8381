#!/usr/bin/env bash
# install-deps.sh - installs what ddtrain needs from Debian's packages, only what is missing.
#
#   launch/install-deps.sh [build|data|kjv|test|format|slurm|cluster|bench|plot]...
#     build: compiler, CMake, Open MPI, HDF5, OpenBLAS, zlib, libpng and libjpeg-turbo (for
#            `ddtrain convert images`) (always included)
#     data:  Debian's Fashion-MNIST (dataset-fashion-mnist)
#     kjv:   the King James Bible (bible-kjv), the text of launch/examples/kjv-data.sh
#     test:  h5py and numpy, used by the end-to-end tests to inspect files; cjpeg
#            (libjpeg-turbo-progs), with which they make JPEG files; PyTorch (python3-torch),
#            the reference of the oracle tests (tests/oracle); the slurm, cluster and plot
#            groups; Lmod (tests/e2e/install.sh loads the installed module file); and
#            TensorBoard from PyPI (below), whose reader tests/e2e/tensorboard.sh uses; and
#            the format group
#     format: clang-format (with git clang-format), for .ci/check-format.sh
#     slurm: Slurm and munge, for launch/slurm/local-cluster.sh and tests/e2e/slurm.sh
#            (local-cluster.sh runs its own daemons and needs none of the system's)
#     cluster: iproute2 (ip, tc) and util-linux (nsenter, unshare), for the emulated nodes of
#            launch/local-cluster/cluster.sh and tests/e2e/multinode.sh
#     bench: PyTorch (python3-torch), the peer of bench/vs-pytorch; python3-venv, for the
#            PyTorch 2.x and TensorFlow 2.x environments of bench/vs-peers-* (bench/peers-venv);
#            the King James Bible (bible-kjv), the text of bench/vs-peers-gpt
#     plot:  matplotlib, for bench/plot
# Uses apt-get as root, or through sudo. Does nothing when everything is present.
#
# TensorBoard is not packaged by Debian: the test group installs it with pip into a virtual
# environment, $DDTRAIN_TENSORBOARD_VENV (default ~/.cache/ddtrain/tensorboard-venv), once.
# Where PyPI cannot be reached it says so and goes on; the TensorBoard test then reports
# itself skipped.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then # this file's opening comment
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi

packages=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
          libopenblas-dev zlib1g-dev libpng-dev libpng16-16 libjpeg62-turbo-dev libjpeg62-turbo)
tensorboard=0
for group in "$@"; do
  case "$group" in
    build) ;;
    data) packages+=(dataset-fashion-mnist) ;;
    kjv) packages+=(bible-kjv) ;;
    test)
      packages+=(python3-h5py python3-numpy python3-torch dataset-fashion-mnist slurm-wlm munge
                 python3-matplotlib lmod python3-venv libjpeg-turbo-progs iproute2 util-linux
                 clang-format)
      tensorboard=1
      ;;
    format) packages+=(clang-format) ;;
    slurm) packages+=(slurm-wlm munge) ;;
    cluster) packages+=(iproute2 util-linux) ;;
    bench) packages+=(python3-torch python3-h5py python3-numpy dataset-fashion-mnist gnuplot-nox
                      python3-matplotlib python3-venv bible-kjv) ;;
    plot) packages+=(python3-matplotlib) ;;
    *) echo "install-deps.sh: unknown group '$group' (build, data, kjv, test, format, slurm, cluster, bench, plot)" >&2
       exit 2 ;;
  esac
done

# TensorBoard in its own virtual environment, made with Debian's python3 (and python3-venv,
# installed above).
install_tensorboard() {
  local venv=${DDTRAIN_TENSORBOARD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ddtrain/tensorboard-venv}
  "$venv/bin/python" -c 'import tensorboard' 2>/dev/null && return 0
  echo "ddtrain: installing TensorBoard from PyPI into $venv (for tests/e2e/tensorboard.sh)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if /usr/bin/python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --disable-pip-version-check --timeout 30 --retries 2 \
      'tensorboard>=2.14,<3' >"$venv.log" 2>&1; then
    rm -f "$venv.log"
    return 0
  fi
  echo "ddtrain: warning: could not install TensorBoard from PyPI (is it reachable?);" \
    "tests/e2e/tensorboard.sh will report itself skipped. pip said:" >&2
  tail -3 "$venv.log" >&2 2>/dev/null || true
  rm -rf "$venv" "$venv.log"
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "ddtrain: installing missing packages: ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "ddtrain: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ $tensorboard -eq 0 ]] || install_tensorboard
