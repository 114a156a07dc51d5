#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/test_mitmweb_browser.py
# drives it with playwright through executable_path; playwright's own browser
# download is never used), with an emoji font so mitmweb's flow marks show in
# screenshots. Needs root for apt-get; does nothing when both are there.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -d /usr/share/fonts/truetype/noto ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_browser: Chromium or its fonts are missing; run this script as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-noto-color-emoji >/dev/null
/usr/bin/chromium --version
