# shellcheck shell=bash
# Which Debian archive the host's apt already uses. The testbed root is built
# from that same archive (it serves sid as well as the host's release), so a
# host behind a local mirror builds the testbed unchanged and no archive
# address is written into the project. Sourced by lib.sh; tested on sample
# files by test-apt-archive.sh.

# Debian's suite names and codenames; the host's own codename (from
# os-release, when ID=debian) is added, so a newer release is found too.
TB_DEBIAN_SUITES="oldoldstable oldstable stable testing unstable sid experimental
buster bullseye bookworm trixie forky duke"

# tb_apt_source_files [ETC]: the source files apt reads under ETC (default
# /etc): apt/sources.list, then apt/sources.list.d/*.list and *.sources by name.
tb_apt_source_files() {
    local etc=${1:-/etc} f
    [[ ! -f $etc/apt/sources.list ]] || echo "$etc/apt/sources.list"
    for f in "$etc"/apt/sources.list.d/*; do
        case $f in *.list | *.sources) [[ ! -f $f ]] || echo "$f" ;; esac
    done
}

# tb_apt_entries FILE...: one line "TYPE URI SUITE COMPONENTS" (components
# comma-separated, "-" if none) per enabled entry, from one-line-style files
# and deb822 files (names ending in .sources).
tb_apt_entries() {
    [[ $# -gt 0 ]] || return 0
    awk '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    function out(type, uri, suite, comps) {
        if (comps == "") comps = "-"
        print type, uri, suite, comps
    }
    # deb822: every combination of Types, URIs and Suites of one stanza.
    function flush(   nt, nu, ns, i, j, k, T, U, S, comps) {
        if (f["types"] != "" && tolower(f["enabled"]) !~ /^no/) {
            nt = split(f["types"], T, /[ \t]+/)
            nu = split(f["uris"], U, /[ \t]+/)
            ns = split(f["suites"], S, /[ \t]+/)
            comps = f["components"]
            gsub(/[ \t]+/, ",", comps)
            for (i = 1; i <= nt; i++)
                for (j = 1; j <= nu; j++)
                    for (k = 1; k <= ns; k++)
                        out(T[i], U[j], S[k], comps)
        }
        split("", f)
        last = ""
    }
    FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
    deb822 && /^#/ { next }
    deb822 && /^[ \t]*$/ { flush(); next }
    deb822 && /^[ \t]/ { if (last != "") f[last] = trim(f[last] " " trim($0)); next }
    deb822 {
        i = index($0, ":")
        if (i == 0) next
        last = tolower(trim(substr($0, 1, i - 1)))
        f[last] = trim(substr($0, i + 1))
        next
    }
    {
        line = $0
        sub(/#.*/, "", line)        # apt cuts a comment wherever it starts
        line = trim(line)
        n = split(line, w, /[ \t]+/)
        if (n < 3 || (w[1] != "deb" && w[1] != "deb-src")) next
        i = 2
        if (w[i] ~ /^\[/) {         # [ option=value ... ]
            while (i <= n && w[i] !~ /\]$/) i++
            i++
        }
        if (i + 1 > n) next
        comps = ""
        for (j = i + 2; j <= n; j++) comps = comps (comps == "" ? "" : ",") w[j]
        out(w[1], w[i], w[i + 1], comps)
    }
    END { flush() }
    ' "$@"
}

# tb_debian_archive [ETC]: print the URI of the main Debian archive among the
# host's apt sources under ETC (default /etc): an http(s) or file URI with a
# Debian suite and the main component; never the security archive. Binary
# entries come before deb-src ones, a release's own suite before its -updates
# or -backports; then apt's order. Status 1 if there is none.
tb_debian_archive() {
    local etc=${1:-/etc} suites=$TB_DEBIAN_SUITES id="" codename=""
    local -a files
    mapfile -t files < <(tb_apt_source_files "$etc")
    [[ ${#files[@]} -gt 0 ]] || return 1
    if [[ -f $etc/os-release ]]; then
        id=$(sed -n 's/^ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$etc/os-release")
        codename=$(sed -n 's/^VERSION_CODENAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$etc/os-release")
    fi
    [[ $id != debian || -z $codename ]] || suites+=" $codename"
    tb_apt_entries "${files[@]}" | awk -v suites="$suites" '
    BEGIN {
        n = split(suites, L, /[ \t\n]+/)
        for (i = 1; i <= n; i++) if (L[i] != "") known[L[i]] = 1
        best = 99
    }
    {
        type = $1; uri = $2; suite = $3; comps = "," $4 ","
        if (uri !~ /^(https?|file):\/\//) next
        sub(/\/+$/, "", uri)
        if (suite ~ /-security$/ || suite ~ /\/updates$/ || uri ~ /-security$/) next
        base = suite
        sub(/-(updates|backports|backports-sloppy|proposed-updates)$/, "", base)
        if (!(base in known) || comps !~ /,main,/) next
        score = (type == "deb" ? 0 : 2) + (suite == base ? 0 : 1)
        if (score < best) { best = score; pick = uri }
    }
    END { if (pick == "") exit 1; print pick }
    '
}

# tb_mirror [ETC]: the archive the root is built from: $VGPUD_TESTBED_MIRROR,
# else the host's (tb_debian_archive ETC). Fails with a message if neither.
tb_mirror() {
    if [[ -n ${VGPUD_TESTBED_MIRROR:-} ]]; then
        echo "$VGPUD_TESTBED_MIRROR"
        return 0
    fi
    local etc=${1:-/etc} uri
    if ! uri=$(tb_debian_archive "$etc"); then
        tb_log "error: no Debian archive in the host's apt sources ($etc/apt/sources.list," \
            "$etc/apt/sources.list.d/*.list and *.sources: a deb entry with a Debian suite" \
            "and the main component, not security)."
        tb_log "Set VGPUD_TESTBED_MIRROR to the URI of a Debian archive (or local mirror)" \
            "that serves $TB_SUITE."
        return 1
    fi
    echo "$uri"
}
