#!/usr/bin/env bash
# Tests apt-archive.sh (which Debian archive the testbed root is built from)
# on sample apt configurations in both formats. Needs no root and no network;
# takes well under a second. Exit status 0 when every check passed.
#
# usage: test-apt-archive.sh
#
# The sample addresses use the reserved .invalid domain.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT
PASSED=0
FAILED=0

check() {
    local name=$1 want=$2 got=$3
    if [[ $got == "$want" ]]; then
        PASSED=$((PASSED + 1))
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL: %s: got "%s", expected "%s"\n' "$name" "$got" "$want"
    fi
}

# etc NAME: a fresh sample /etc; files are then written with put.
etc() {
    ETC=$TMP/$1
    mkdir -p "$ETC/apt/sources.list.d"
    printf 'ID=debian\nVERSION_CODENAME=bookworm\n' >"$ETC/os-release"
}
put() { cat >"$ETC/$1"; }

# The archive tb_debian_archive finds, or "none".
archive() { tb_debian_archive "$ETC" 2>/dev/null || echo none; }

# --- deb822 ------------------------------------------------------------------

etc deb822-debian12
put apt/sources.list.d/debian.sources <<'EOF'
Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: http://deb.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# Not read by apt: neither .list nor .sources.
put apt/sources.list.d/other.list.disabled <<'EOF'
deb http://other.invalid/debian bookworm main
EOF
check "deb822, Debian 12 default" http://deb.invalid/debian "$(archive)"

etc deb822-security-first
put apt/sources.list.d/00-security.sources <<'EOF'
Types: deb deb-src
URIs: http://security.invalid/debian-security/
Suites: trixie-security
Components: main contrib
EOF
put apt/sources.list.d/debian.sources <<'EOF'
types: deb
uris: http://mirror.invalid:3142/debian/
suites: trixie-updates trixie
components: contrib main non-free-firmware
EOF
check "deb822, security first, lower-case fields, trailing /" \
    http://mirror.invalid:3142/debian "$(archive)"

etc deb822-disabled-and-third-party
put apt/sources.list.d/a-nodesource.sources <<'EOF'
Types: deb
URIs: https://node.invalid/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
EOF
put apt/sources.list.d/b-debian.sources <<'EOF'
Enabled: no
Types: deb
URIs: http://disabled.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://one.invalid/debian
  http://two.invalid/debian
Suites:
  sid
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPEpX2sMH1vxnIA0s5IkNPVe
 URIs: http://not-a-field.invalid/debian
 -----END PGP PUBLIC KEY BLOCK-----
EOF
check "deb822, disabled stanza, folded fields, embedded key, third-party repo" \
    http://one.invalid/debian "$(archive)"

etc deb822-updates-only-first
put apt/sources.list.d/debian.sources <<'EOF'
Types: deb-src
URIs: http://src.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://updates.invalid/debian
Suites: bookworm-updates
Components: main

Types: deb
URIs: http://release.invalid/debian
Suites: bookworm
Components: main
EOF
check "deb822, a release's suite before -updates and deb-src" \
    http://release.invalid/debian "$(archive)"

# --- one-line style ----------------------------------------------------------

etc list-classic
put apt/sources.list <<'EOF'
# deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 DVD Binary-1]/ bookworm main

deb http://security.invalid/debian-security bookworm-security main contrib
deb-src http://security.invalid/debian-security bookworm-security main contrib
deb http://security.invalid/ bullseye/updates main
   deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.invalid/debian/ bookworm main non-free-firmware   # a comment
deb-src http://ftp.invalid/debian/ bookworm main non-free-firmware
EOF
check "sources.list, options, comments, security entries" http://ftp.invalid/debian "$(archive)"

etc list-options-with-spaces
put apt/sources.list.d/mirror.list <<'EOF'
deb [ arch=amd64 trusted=yes ] http://local.invalid/debian trixie-backports main
deb [ arch=amd64 trusted=yes ] file:///srv/mirror/debian trixie contrib main
deb mirror+file:///etc/apt/mirrors.txt trixie main
EOF
check "*.list, bracket options with spaces, file URI preferred over -backports" \
    file:///srv/mirror/debian "$(archive)"

etc list-and-sources
put apt/sources.list <<'EOF'
deb https://docker.invalid/linux/debian bookworm stable
EOF
put apt/sources.list.d/debian.sources <<'EOF'
Types: deb
URIs: https://deb822.invalid/debian
Suites: testing
Components: main
EOF
check "sources.list without Debian's main + a .sources file" https://deb822.invalid/debian "$(archive)"

etc host-codename
printf 'PRETTY_NAME="Debian"\nID="debian"\nVERSION_CODENAME="zeta"\n' >"$ETC/os-release"
put apt/sources.list <<'EOF'
deb http://new.invalid/debian zeta main
EOF
check "a release newer than the list, named by the host's os-release" \
    http://new.invalid/debian "$(archive)"

# --- nothing to find ----------------------------------------------------------

etc only-security-and-others
put apt/sources.list <<'EOF'
deb http://security.invalid/debian-security bookworm-security main
deb http://mirror.invalid/security bookworm-security main
# deb http://commented.invalid/debian bookworm main
deb https://cloud.invalid/apt cloud-sdk-bookworm main
deb cdrom:[Debian]/ bookworm main
EOF
check "only security, commented and third-party entries" none "$(archive)"

etc ubuntu
printf 'ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n' >"$ETC/os-release"
put apt/sources.list.d/ubuntu.sources <<'EOF'
Types: deb
URIs: http://archive.invalid/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
EOF
check "an Ubuntu archive is not a Debian one" none "$(archive)"

etc empty
rm -rf "$ETC/apt"
check "no apt directory" none "$(archive)"

# --- tb_mirror: the override, and the error without it -------------------------

etc mirror
put apt/sources.list <<'EOF'
deb http://host.invalid/debian bookworm main
EOF
check "tb_mirror: host archive" http://host.invalid/debian "$(VGPUD_TESTBED_MIRROR='' tb_mirror "$ETC")"
check "tb_mirror: VGPUD_TESTBED_MIRROR wins" http://override.invalid/debian \
    "$(VGPUD_TESTBED_MIRROR=http://override.invalid/debian tb_mirror "$ETC")"
rc=0
msg=$(VGPUD_TESTBED_MIRROR='' tb_mirror "$TMP/empty" 2>&1 >/dev/null) || rc=$?
check "tb_mirror: fails without either" 1 "$rc"
check "tb_mirror: says what to set" 1 "$(grep -c 'Set VGPUD_TESTBED_MIRROR' <<<"$msg")"

echo "test-apt-archive: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
