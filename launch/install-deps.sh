#!/usr/bin/env bash
# install-deps.sh - installs what ddtrain needs from Debian's packages, only what is missing.
#
#   launch/install-deps.sh [build|data|test|slurm|bench]...
#     build: compiler, CMake, Open MPI, HDF5, OpenBLAS, zlib (always included)
#     data:  Debian's Fashion-MNIST (dataset-fashion-mnist)
#     test:  h5py and numpy, used by the end-to-end tests to inspect files; the slurm group
#     slurm: Slurm and munge, for launch/slurm/local-cluster.sh and tests/e2e/slurm.sh
#            (local-cluster.sh runs its own daemons and needs none of the system's)
#     bench: PyTorch (python3-torch), the peer in bench/
# Uses apt-get as root, or through sudo. Does nothing when everything is present.
set -euo pipefail

packages=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
          libopenblas-dev zlib1g-dev)
for group in "$@"; do
  case "$group" in
    build) ;;
    data) packages+=(dataset-fashion-mnist) ;;
    test) packages+=(python3-h5py python3-numpy dataset-fashion-mnist slurm-wlm munge) ;;
    slurm) packages+=(slurm-wlm munge) ;;
    bench) packages+=(python3-torch python3-h5py python3-numpy dataset-fashion-mnist gnuplot-nox
                      python3-matplotlib) ;;
    *) echo "install-deps.sh: unknown group '$group' (build, data, test, slurm, bench)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "ddtrain: installing missing packages: ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "ddtrain: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
