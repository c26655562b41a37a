#!/bin/sh
# Installs the Debian 12 packages that building, testing and the default corpus need.
# Run as root, or with sudo available.
set -eu
packages="build-essential autoconf automake libtool libltdl-dev pkg-config check libcjson-dev
libopenblas-dev ocl-icd-opencl-dev opencl-headers pocl-opencl-icd libclblast-dev clinfo
bible-kjv gnuplot-nox python3 python3-mpmath"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $packages
