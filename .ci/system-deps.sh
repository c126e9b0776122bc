#!/usr/bin/env bash
# Installs the real hosts the tests drive: Xvfb for napari, Debian's ImageJ 1.53t, and
# Groovy for the QuPath scripts.  Skips what is already there.
set -euo pipefail
need=()
command -v xvfb-run >/dev/null || need+=(xvfb xauth)
[[ -f /usr/share/java/ij.jar ]] || need+=(imagej)
command -v groovy >/dev/null || need+=(groovy)
for lib in libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
  libxcb-xinerama0 libxcb-xkb1 libxcb-shape0 libxcb-randr0 libxkbcommon-x11-0 \
  libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
if ((${#need[@]})); then
  echo "Installing system packages: ${need[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
