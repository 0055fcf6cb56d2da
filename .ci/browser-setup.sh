#!/usr/bin/env bash
# Chromium for tests/test_browser.py: Debian's `chromium` package (/usr/bin/chromium), which
# Playwright drives through executable_path (never `playwright install`: no browser downloads).
# Always exits 0: where Chromium cannot be installed the browser test skips and says why.
set -u
CHROMIUM=/usr/bin/chromium
say() { echo "browser-setup: $*"; }

if [ -x "$CHROMIUM" ]; then
    say "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get on this machine: cannot install Chromium; tests/test_browser.py will be skipped"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        say "not root and no password-less sudo: cannot install Chromium; tests/test_browser.py will be skipped"
        exit 0
    fi
fi
log=$(mktemp)
say "installing Debian's chromium with apt-get (a few minutes) ..."
if timeout 900 $SUDO apt-get update >"$log" 2>&1 &&
   DEBIAN_FRONTEND=noninteractive timeout 1200 $SUDO apt-get install -y chromium >>"$log" 2>&1 &&
   [ -x "$CHROMIUM" ]; then
    say "$("$CHROMIUM" --version 2>/dev/null) installed"
else
    say "apt-get could not install chromium; tests/test_browser.py will be skipped. Last lines of apt-get:"
    tail -n 15 "$log"
fi
rm -f "$log"
exit 0
