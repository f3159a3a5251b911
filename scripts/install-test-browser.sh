#!/usr/bin/env bash
# Install the headless browser the explorer's browser test drives (tests/explorer/): Debian's
# chromium and its matching chromedriver (same package version, so driver and browser always
# agree). Idempotent: does nothing when both are already there. Without root or apt-get it only
# says how to install them and exits 0; the test then skips locally and fails under CI=true.
set -euo pipefail

BROWSER=${ATTNCONV_CHROMIUM:-/usr/bin/chromium}
DRIVER=${ATTNCONV_CHROMEDRIVER:-/usr/bin/chromedriver}
PACKAGES=(chromium chromium-driver)

if [[ -x "$BROWSER" && -x "$DRIVER" ]]; then
    exit 0
fi

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "install-test-browser: installing ${PACKAGES[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    if [[ -x "$BROWSER" && -x "$DRIVER" ]]; then
        echo "install-test-browser: $("$BROWSER" --version 2>/dev/null || echo chromium) and" \
             "$("$DRIVER" --version 2>/dev/null | head -n1 || echo chromedriver) installed" >&2
        exit 0
    fi
    echo "install-test-browser: apt-get finished but $BROWSER or $DRIVER is missing" >&2
    exit 1
fi

cat >&2 <<MSG
install-test-browser: $BROWSER and $DRIVER are needed for the explorer's browser test.
Install them as root on Debian/Ubuntu:
    apt-get update && apt-get install -y --no-install-recommends ${PACKAGES[*]}
or point ATTNCONV_CHROMIUM / ATTNCONV_CHROMEDRIVER at a Chromium and its chromedriver.
Without them the browser test is skipped locally and fails in CI (CI=true).
MSG
exit 0
