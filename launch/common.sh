# common.sh - what the quickstart and the examples share, sourced by them (not run):
#   ddtrain_ready DEPS...   installs what is missing (install-deps.sh DEPS...) and sets
#                           $ddtrain: the installed binary when the sourcing script's line
#                           `installed="..."` names one (cmake --install writes it), else a
#                           Release build in ${DDTRAIN_BUILD_DIR:-build}, from the repository
#                           root, which becomes the working directory;
#   fashion_data            Debian's Fashion-MNIST as HDF5 under data/ (4 training shards and
#                           the test set), converted once;
#   mpirun_args             mpirun's arguments for 2 ranks on this machine (root, few cores).
# Outputs go to data/ under the working directory.

launch_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ddtrain_ready() {
  if [[ -n ${installed:-} ]]; then
    "$launch_dir/install-deps.sh" "$@"
    ddtrain=$installed
  else
    cd "$launch_dir/.."
    launch/install-deps.sh "$@"
    local build_dir=${DDTRAIN_BUILD_DIR:-build}
    cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build_dir" -j "$(nproc)" >/dev/null
    ddtrain=$build_dir/ddtrain
  fi
}

fashion_data() {
  local source_dir=/usr/share/datasets/fashion-mnist
  mkdir -p data
  if [[ ! -f data/fashion-train-00003-of-00004.h5 ]]; then
    "$ddtrain" convert idx "$source_dir/train-images-idx3-ubyte.gz" \
      "$source_dir/train-labels-idx1-ubyte.gz" -o data/fashion-train.h5 --shards 4
  fi
  if [[ ! -f data/fashion-test.h5 ]]; then
    "$ddtrain" convert idx "$source_dir/t10k-images-idx3-ubyte.gz" \
      "$source_dir/t10k-labels-idx1-ubyte.gz" -o data/fashion-test.h5
  fi
}

# mpirun refuses to run as root unless told; more ranks than cores need --oversubscribe.
mpirun_args=(-np 2)
if [[ $(id -u) -eq 0 ]]; then mpirun_args+=(--allow-run-as-root); fi
if [[ $(nproc) -lt 2 ]]; then mpirun_args+=(--oversubscribe); fi
