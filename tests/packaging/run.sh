#!/usr/bin/env bash
# Packaging suite: builds the .deb and the .rpm in their own build directory (build-pkg/,
# or KNR_PKG_BUILD_DIR) with the default build type, checks the binary's hardening, what
# the packages contain and declare, lints both (lintian, rpmlint: every tag left is
# justified in packaging/README.md), checks the unit (systemd-analyze verify, exposure
# score, the exit-status contract), then installs the .deb with dpkg, runs the installed
# relay, upgrades over itself, removes and purges it.
#
#   tests/packaging/run.sh
#
# Prints one line per check and a summary: "packaging: N checks passed, M failed".
# Exit status is non-zero when any check failed. The install checks need root and a
# machine where kumo-nats-relay is not installed already (they would replace it): they
# are skipped otherwise, and counted as skipped. The service is never started.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
build=${KNR_PKG_BUILD_DIR:-$repo/build-pkg}
pkg=kumo-nats-relay
unit=$pkg.service
max_exposure=2.0

passed=0
failed=0
skipped=0
work=$(mktemp -d)
user_existed=1
kumod_existed=1
spool_existed=1

# Leave the machine as found, even when interrupted: purge the package, and delete the
# user and the kumod group when the run created them.
installing=0
restore_machine() {
    [[ $installing -eq 1 ]] || return 0
    installing=0
    if dpkg-query -W "$pkg" >/dev/null 2>&1; then
        dpkg -P "$pkg" >/dev/null 2>&1
    fi
    if [[ $user_existed -eq 0 ]]; then
        userdel kumo-nats-relay 2>/dev/null
        getent group kumo-nats-relay >/dev/null && groupdel kumo-nats-relay 2>/dev/null
    fi
    [[ $kumod_existed -eq 1 ]] || groupdel kumod 2>/dev/null
    [[ $spool_existed -eq 1 ]] || rm -rf /var/log/kumomta
    return 0
}
trap 'restore_machine; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

pass() {
    passed=$((passed + 1))
    echo "ok   $1"
}

# fail DESCRIPTION [DETAILS]
fail() {
    failed=$((failed + 1))
    echo "FAIL $1"
    if [[ -n "${2:-}" ]]; then
        sed 's/^/     | /' <<<"$2"
    fi
}

# check DESCRIPTION COMMAND...: passes when COMMAND exits 0; shows its output otherwise.
check() {
    local desc=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$desc"
    else
        fail "$desc" "$out"
    fi
}

summary() {
    local line="packaging: $passed checks passed, $failed failed"
    if [[ $skipped -gt 0 ]]; then
        line+=", $skipped skipped"
    fi
    echo "$line"
}

# same_lines EXPECTED ACTUAL: equal as sorted sets of lines, else print the difference.
same_lines() {
    diff <(sort <<<"$1") <(sort <<<"$2")
}

# ---------------------------------------------------------------------------------------
# Build: exactly what README.md tells an operator to run (no build type, no extra flags:
# the defaults must give a hardened release build), no tests, both generators.

SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH

build_log=$work/build.log
rm -f "$build"/*.deb "$build"/*.rpm
# A build directory made by an older run keeps its cached build type and flags.
rm -f "$build/CMakeCache.txt"
if cmake -S . -B "$build" -DRELAY_TESTS=OFF >"$build_log" 2>&1 &&
    cmake --build "$build" -j2 >>"$build_log" 2>&1 &&
    (cd "$build" && cpack -G "DEB;RPM") >>"$build_log" 2>&1; then
    pass "build: cmake, then cpack -G 'DEB;RPM'"
else
    fail "build: cmake, then cpack -G 'DEB;RPM'" "$(tail -n 40 "$build_log")"
    summary
    exit 1
fi

debs=("$build"/${pkg}_*.deb)
rpms=("$build"/$pkg-*.rpm)
if [[ ${#debs[@]} -eq 1 && -f ${debs[0]} && ${#rpms[@]} -eq 1 && -f ${rpms[0]} ]]; then
    pass "one .deb and one .rpm: $(basename "${debs[0]}") $(basename "${rpms[0]}")"
else
    fail "one .deb and one .rpm" "$(ls -l "$build")"
    summary
    exit 1
fi
deb=${debs[0]}
rpm=${rpms[0]}
version=$(dpkg-deb -f "$deb" Version)
upstream_version=${version%-*}
binary=$build/kumo-nats-relay

# The packages' runtime libraries are whatever the binary links: its DT_NEEDED entries.
mapfile -t needed < <(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
if [[ ${#needed[@]} -gt 0 ]]; then
    pass "the binary links ${#needed[@]} shared libraries: ${needed[*]}"
else
    fail "readelf -d finds the binary's shared libraries" "$(readelf -d "$binary" 2>&1 | head)"
fi

# The default build: Release, and hardened without help from the packaging tools.
check "the default build type is Release" \
    grep -qx 'CMAKE_BUILD_TYPE:STRING=Release' "$build/CMakeCache.txt"
hardening_ok() {
    local dyn syms missing=()
    dyn=$(readelf -d "$binary")
    syms=$(nm -D --undefined-only "$binary")
    readelf -h "$binary" | grep -q 'Type: *DYN' && grep -q 'Flags:.*PIE' <<<"$dyn" ||
        missing+=("PIE")
    readelf -lW "$binary" | grep -q GNU_RELRO || missing+=("-z relro")
    grep -q 'BIND_NOW' <<<"$dyn" || missing+=("-z now")
    grep -q '__stack_chk_fail' <<<"$syms" || missing+=("-fstack-protector-strong")
    grep -qE '__[a-z]+_chk\b' <<<"$(grep -v __stack_chk_fail <<<"$syms")" ||
        missing+=("_FORTIFY_SOURCE")
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "missing: ${missing[*]}"
        return 1
    fi
}
check "the binary is hardened: PIE, RELRO, BIND_NOW, stack protector, fortified calls" \
    hardening_ok

# ---------------------------------------------------------------------------------------
# What the packages say about themselves: license, homepage, maintainer.

homepage=https://github.com/kumo-nats-relay/kumo-nats-relay
maintainer=$(sed -n 's/^RELAY_PACKAGE_MAINTAINER:STRING=//p' "$build/CMakeCache.txt")
check "LICENSE in the tree is the Apache License 2.0" \
    bash -c 'grep -q "Apache License" "$1/LICENSE" && grep -q "Version 2.0, January 2004" "$1/LICENSE" &&
             { [ ! -f /usr/share/common-licenses/Apache-2.0 ] ||
               cmp -s "$1/LICENSE" /usr/share/common-licenses/Apache-2.0; }' _ "$repo"
check "debian/copyright (DEP-5): Files: * is Apache-2.0, with the license paragraph" \
    bash -c 'awk "/^Files: \*\$/ { f = 1; next } f && /^License:/ { print \$2; exit }" "$1" |
             grep -qx Apache-2.0 && grep -qx "License: Apache-2.0" "$1" &&
             grep -q "/usr/share/common-licenses/Apache-2.0" "$1" && ! grep -qi unspecified "$1"' \
    _ "$repo/packaging/debian/copyright"
check "rpm: License: Apache-2.0, URL: the project, LICENSE as %license" \
    bash -c '[ "$(rpm -qp --qf "%{LICENSE}|%{URL}" "$1" 2>/dev/null)" = "Apache-2.0|$2" ] &&
             rpm -qp --qf "[%{FILEFLAGS:fflags} %{FILENAMES}\n]" "$1" 2>/dev/null |
             grep -qx "l /usr/share/licenses/kumo-nats-relay/LICENSE"' _ "$rpm" "$homepage"
check "deb: Homepage: the project" \
    bash -c '[ "$(dpkg-deb -f "$1" Homepage)" = "$2" ]' _ "$deb" "$homepage"
check "Maintainer (.deb) and Packager (.rpm) are RELAY_PACKAGE_MAINTAINER, a real address" \
    bash -c '[ "$(dpkg-deb -f "$1" Maintainer)" = "$3" ] &&
             [ "$(rpm -qp --qf "%{PACKAGER}" "$2" 2>/dev/null)" = "$3" ] &&
             grep -qE "^[^<>]+ <[^@<> ]+@[^@<> ]+\.[a-z]+>$" <<<"$3" &&
             ! grep -qE "\.(example|invalid|test|localhost)>$|@example\." <<<"$3"' \
    _ "$deb" "$rpm" "$maintainer"
# Another maintainer at configure time reaches both packages and the Debian changelog.
maint_build=$work/maintainer-build
check "-DRELAY_PACKAGE_MAINTAINER sets the .deb's Maintainer, the .rpm's Packager, the changelog" \
    bash -c 'cmake -S "$1" -B "$2" -DRELAY_TESTS=OFF "-DRELAY_PACKAGE_MAINTAINER=$3" >/dev/null &&
             grep -qF "set(CPACK_DEBIAN_PACKAGE_MAINTAINER \"$3\")" "$2/CPackConfig.cmake" &&
             grep -qF "%define packager $3" "$2/CPackConfig.cmake" &&
             zcat "$2/packaging/changelog.Debian.gz" | grep -qF -- "-- $3  "' \
    _ "$repo" "$maint_build" "Jane Doe <jane@mta.example.org>"
rm -rf "$maint_build"

# ---------------------------------------------------------------------------------------
# The .deb: dpkg-deb -c and -I.

expected_deb_files="/etc/kumo-nats-relay/policy.lua
/etc/kumo-nats-relay/relay.yaml
/etc/logrotate.d/kumo-nats-relay
/lib/systemd/system/kumo-nats-relay.service
/usr/bin/kumo-nats-relay
/usr/lib/sysusers.d/kumo-nats-relay.conf
/usr/share/doc/kumo-nats-relay/README.md
/usr/share/doc/kumo-nats-relay/changelog.Debian.gz
/usr/share/doc/kumo-nats-relay/copyright
/usr/share/doc/kumo-nats-relay/examples/kumo-nats-relay.json
/usr/share/doc/kumo-nats-relay/examples/kumo-nats-relay.rules.yml
/usr/share/doc/kumo-nats-relay/examples/policy-connection.lua
/usr/share/doc/kumo-nats-relay/examples/policy.lua
/usr/share/doc/kumo-nats-relay/examples/relay.yaml
/usr/share/lintian/overrides/kumo-nats-relay
/usr/share/man/man8/kumo-nats-relay.8.gz"
deb_listing=$(dpkg-deb -c "$deb")
deb_files=$(awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' <<<"$deb_listing")
check "dpkg-deb -c: exactly the binary, the conffiles, the unit, sysusers.d, the docs and the man page" \
    same_lines "$expected_deb_files" "$deb_files"
check "dpkg-deb -c: no test tools or tests" \
    bash -c '! grep -E "spoolwrite|streamtool|zstdpeek|/test_|criterion" <<<"$1"' _ "$deb_listing"
check "dpkg-deb -c: /usr/bin/kumo-nats-relay is root:root 0755" \
    grep -qE '^-rwxr-xr-x root/root .* \./usr/bin/kumo-nats-relay$' <<<"$deb_listing"

check "dpkg-deb -I: conffiles are relay.yaml, policy.lua and the logrotate snippet" \
    same_lines "/etc/kumo-nats-relay/relay.yaml
/etc/kumo-nats-relay/policy.lua
/etc/logrotate.d/kumo-nats-relay" "$(dpkg-deb -I "$deb" conffiles)"
deb_info=$(dpkg-deb -I "$deb")
check "dpkg-deb -I: postinst, prerm and postrm, executable" \
    bash -c 'for s in postinst prerm postrm; do
                 grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$s " <<<"$1" || { echo "$s"; exit 1; }
             done' _ "$deb_info"

depends=$(dpkg-deb -f "$deb" Depends)
echo "     Depends: $depends"
deb_deps_ok() {
    local lib path owner p missing=()
    for lib in "${needed[@]}"; do
        # "libz.so.1 => /lib/.../libz.so.1 (0x...)", and the dynamic loader as
        # "/lib64/ld-linux-x86-64.so.2 (0x...)": its path is the first field.
        path=$(ldd "$binary" | awk -v l="$lib" '$1 == l { print $3; exit }
                                                 $1 ~ ("/" l "$") { print $1; exit }')
        owner=""
        # merged /usr: dpkg knows each library under one of its two names.
        for p in "$path" "$(readlink -f "$path")" "/usr$path" "${path#/usr}"; do
            owner=$(dpkg -S "$p" 2>/dev/null | grep -v '^diversion' | head -n 1 | cut -d: -f1)
            [[ -n "$owner" ]] && break
        done
        if [[ -z "$owner" ]] || ! grep -qE "(^|, )$owner( |,|$)" <<<"$depends"; then
            missing+=("$lib (${owner:-no package})")
        fi
    done
    grep -qE '(^|, )adduser( |,|$)' <<<"$depends" || missing+=("adduser")
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "not in Depends: ${missing[*]}"
        return 1
    fi
}
check "dpkg-deb -I: Depends names the package of every linked library, and adduser" deb_deps_ok
check "dpkg-deb -I: no build dependency in Depends" \
    bash -c '! grep -Ei -- "-dev\b|cmake|gcc|pkg-config|criterion|nats-server|build-essential" <<<"$1"' \
    _ "$depends"

# ---------------------------------------------------------------------------------------
# The .rpm: rpm -qlp and -qRp.

expected_rpm_files="/etc/kumo-nats-relay
/etc/kumo-nats-relay/policy.lua
/etc/kumo-nats-relay/relay.yaml
/etc/logrotate.d/kumo-nats-relay
/usr/bin/kumo-nats-relay
/usr/lib/systemd/system/kumo-nats-relay.service
/usr/lib/sysusers.d/kumo-nats-relay.conf
/usr/share/doc/kumo-nats-relay
/usr/share/doc/kumo-nats-relay/README.md
/usr/share/doc/kumo-nats-relay/examples
/usr/share/doc/kumo-nats-relay/examples/kumo-nats-relay.json
/usr/share/doc/kumo-nats-relay/examples/kumo-nats-relay.rules.yml
/usr/share/doc/kumo-nats-relay/examples/policy-connection.lua
/usr/share/doc/kumo-nats-relay/examples/policy.lua
/usr/share/doc/kumo-nats-relay/examples/relay.yaml
/usr/share/licenses/kumo-nats-relay
/usr/share/licenses/kumo-nats-relay/LICENSE
/usr/share/man/man8/kumo-nats-relay.8.gz"
check "rpm -qlp: exactly the binary, the config, the unit, sysusers.d, the docs, LICENSE and the man page" \
    same_lines "$expected_rpm_files" "$(rpm -qlp "$rpm" 2>/dev/null)"
rpm_files=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" 2>/dev/null)
check "rpm -qp: relay.yaml, policy.lua and the logrotate snippet are %config(noreplace)" \
    bash -c 'grep -qx "cn -rw-r--r-- root root /etc/kumo-nats-relay/relay.yaml" <<<"$1" &&
             grep -qx "cn -rw-r--r-- root root /etc/kumo-nats-relay/policy.lua" <<<"$1" &&
             grep -qx "cn -rw-r--r-- root root /etc/logrotate.d/kumo-nats-relay" <<<"$1" &&
             [ "$(grep -c "^c" <<<"$1")" -eq 3 ]' _ "$rpm_files"
check "rpm -qp: /etc/kumo-nats-relay is 0750 root:kumo-nats-relay" \
    grep -qx " drwxr-x--- root kumo-nats-relay /etc/kumo-nats-relay" <<<"$rpm_files"

requires=$(rpm -qRp "$rpm" 2>/dev/null)
echo "     Requires: $(grep -E '^[^()]+(\(\)\(64bit\))?$' <<<"$requires" | sort -u | tr '\n' ' ')"
rpm_deps_ok() {
    local lib missing=()
    for lib in "${needed[@]}"; do
        grep -qE "^${lib//./\\.}\(\)" <<<"$requires" || missing+=("$lib")
    done
    for r in shadow-utils systemd; do
        grep -qx "$r" <<<"$requires" || missing+=("$r")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "not required: ${missing[*]}"
        return 1
    fi
}
check "rpm -qRp: requires every linked library (autoreq), shadow-utils and systemd" rpm_deps_ok
check "rpm -qRp: no build dependency" \
    bash -c '! grep -Ei -- "-devel|cmake|gcc|pkgconfig|criterion|nats-server" <<<"$1"' _ "$requires"

# The scriptlets, run against stand-ins for useradd & co. that only record their calls:
# what they do on install, upgrade and erase, without touching this machine.
stubs=$work/stubs
mkdir -p "$stubs"
for tool in groupadd useradd usermod systemctl; do
    printf '#!/bin/sh\necho "%s $*" >>"%s/calls"\n' "$tool" "$work" >"$stubs/$tool"
done
# getent: neither the user nor its group exist yet; KumoMTA's kumod group does.
printf '#!/bin/sh\n[ "$1 $2" = "group kumod" ]\n' >"$stubs/getent"
# systemd-sysusers also keeps what it reads on stdin (the inlined sysusers.d file).
printf '#!/bin/sh\necho "systemd-sysusers $*" >>"%s/calls"\ncat >"%s/sysusers.stdin"\n' \
    "$work" "$work" >"$stubs/systemd-sysusers"
chmod +x "$stubs"/*
# The same without systemd-sysusers, and nothing else on PATH: the useradd fallback.
stubs_nosysusers=$work/stubs-nosysusers
cp -a "$stubs" "$stubs_nosysusers"
rm "$stubs_nosysusers/systemd-sysusers"
for tag in PREIN POSTIN PREUN POSTUN; do
    rpm -qp --qf "%{$tag}\n" "$rpm" >"$work/$tag.sh" 2>/dev/null
done
check "rpm scriptlets: pre, post, preun, postun are valid sh" \
    bash -c 'for t in PREIN POSTIN PREUN POSTUN; do
                 [ -s "$1/$t.sh" ] && ! grep -qx "(none)" "$1/$t.sh" && sh -n "$1/$t.sh" || { echo "$t"; exit 1; }
             done' _ "$work"
# scriptlet_calls TAG ARG [PATH]: the commands the scriptlet runs with $1 = ARG.
scriptlet_calls() {
    rm -f "$work/calls" "$work/sysusers.stdin"
    PATH=${3:-$stubs:$PATH} /bin/sh "$work/$1.sh" "$2" >/dev/null 2>&1
    cat "$work/calls" 2>/dev/null
}
if [[ -d /run/systemd/system ]]; then
    reload="systemctl daemon-reload"
    postun_upgrade="$reload
systemctl try-restart $unit"
    stop="systemctl stop $unit
"
else
    reload=""
    postun_upgrade=""
    stop=""
fi
check "rpm %pre on install: systemd-sysusers with the packaged sysusers.d file, then kumod" \
    same_lines "systemd-sysusers --replace=/usr/lib/sysusers.d/kumo-nats-relay.conf -
usermod -a -G kumod kumo-nats-relay" "$(scriptlet_calls PREIN 1)"
sysusers_lines() { sed '/^#/d; /^$/d' "$1"; }
pre_feeds_sysusers_file() {
    scriptlet_calls PREIN 1 >/dev/null
    [[ -s "$work/sysusers.stdin" ]] || {
        echo "systemd-sysusers read nothing on stdin"
        return 1
    }
    diff <(sysusers_lines "$repo/packaging/sysusers/kumo-nats-relay.conf") \
        <(sysusers_lines "$work/sysusers.stdin")
}
check "rpm %pre feeds systemd-sysusers the packaged sysusers.d file's lines" pre_feeds_sysusers_file
check "rpm %pre without systemd-sysusers: groupadd, useradd, then kumod" \
    same_lines "groupadd -r kumo-nats-relay
useradd -r -g kumo-nats-relay -d /var/lib/kumo-nats-relay -M -s /sbin/nologin -c kumo-nats-relay kumo-nats-relay
usermod -a -G kumod kumo-nats-relay" "$(scriptlet_calls PREIN 1 "$stubs_nosysusers")"
check "rpm %post on install: applies the presets (%systemd_post), does not start" \
    same_lines "$(printf '%s\n%s' "systemctl --no-reload preset $unit" "$reload" | sed '/^$/d')" \
    "$(scriptlet_calls POSTIN 1)"
check "rpm %post on upgrade: leaves the enablement alone" \
    same_lines "$reload" "$(scriptlet_calls POSTIN 2)"
check "rpm %preun on erase: stops and disables" \
    same_lines "$(printf '%s%s' "$stop" "systemctl --no-reload disable $unit")" \
    "$(scriptlet_calls PREUN 0)"
check "rpm %preun on upgrade: does nothing" same_lines "" "$(scriptlet_calls PREUN 1)"
check "rpm %postun on upgrade: restarts only a running relay (try-restart)" \
    same_lines "$postun_upgrade" "$(scriptlet_calls POSTUN 1)"

# ---------------------------------------------------------------------------------------
# lintian on the .deb (no errors), rpmlint on the .rpm: every tag either reports prints,
# at any level, has its row in packaging/README.md's "Lint tags" table saying why it
# stays. A new tag fails the suite until it is fixed or justified there.

# tags_justified TOOL TAG...: the TAGs without a "| TOOL | `TAG` |" row.
tags_justified() {
    local tool=$1 tag missing=()
    shift
    for tag in "$@"; do
        grep -qF "| $tool | \`$tag\` |" "$repo/packaging/README.md" || missing+=("$tag")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "not justified in packaging/README.md: ${missing[*]}"
        return 1
    fi
}

lintian --pedantic --tag-display-limit 0 "$deb" >"$work/lintian.out" 2>&1
lintian_rc=$?
lintian_out=$(grep -v 'running with root privileges' "$work/lintian.out")
[[ -z "$lintian_out" ]] || sed 's/^/     lintian: /' <<<"$lintian_out"
lintian_errors=$(grep -c '^E: ' <<<"$lintian_out")
lintian_warnings=$(grep -c '^W: ' <<<"$lintian_out")
if [[ $lintian_errors -eq 0 && $lintian_rc -eq 0 ]]; then
    pass "lintian: 0 errors, $lintian_warnings warnings"
else
    fail "lintian: $lintian_errors errors, $lintian_warnings warnings (exit $lintian_rc)"
fi
mapfile -t lintian_tags < <(sed -n 's/^[A-Z]: [^ ]*: \([^ ]*\).*/\1/p' <<<"$lintian_out" | sort -u)
check "lintian --pedantic: each tag left (${#lintian_tags[@]}) is justified in packaging/README.md" \
    tags_justified lintian "${lintian_tags[@]}"

# rpmlint with packaging/rpm/rpmlint.toml: a distribution's settings (licenses, man page
# compression) where Debian's rpmlint has only upstream defaults.
if command -v rpmlint >/dev/null; then
    rpmlint -c "$repo/packaging/rpm/rpmlint.toml" "$rpm" >"$work/rpmlint.out" 2>&1
    rpmlint_out=$(grep -E '^[^ ]+: [A-Z]: ' "$work/rpmlint.out")
    [[ -z "$rpmlint_out" ]] || sed 's/^/     rpmlint: /' <<<"$rpmlint_out"
    if grep -qE '[0-9]+ packages and [0-9]+ specfiles checked' "$work/rpmlint.out"; then
        pass "rpmlint ran: $(grep -oE '[0-9]+ errors, [0-9]+ warnings' "$work/rpmlint.out")"
    else
        fail "rpmlint ran" "$(tail -n 20 "$work/rpmlint.out")"
    fi
    mapfile -t rpmlint_tags < <(sed -n 's/^[^ ]*: [A-Z]: \([^ ]*\).*/\1/p' <<<"$rpmlint_out" | sort -u)
    check "rpmlint: each tag left (${#rpmlint_tags[@]}) is justified in packaging/README.md" \
        tags_justified rpmlint "${rpmlint_tags[@]}"
else
    fail "rpmlint is installed (packaging/install-deps.sh)"
fi

# ---------------------------------------------------------------------------------------
# The unit: the same file in both packages, systemd-analyze verify, exposure score.

mkdir -p "$work/deb" "$work/rpm"
dpkg-deb -x "$deb" "$work/deb"
(cd "$work/rpm" && rpm2cpio "$rpm" | cpio -idm --quiet) 2>/dev/null
check "both packages ship systemd/kumo-nats-relay.service unchanged" \
    bash -c 'cmp "$1" "$2/deb/lib/systemd/system/$3" && cmp "$1" "$2/rpm/usr/lib/systemd/system/$3"' \
    _ "$repo/systemd/$unit" "$work" "$unit"

# verify resolves ExecStart= paths: point them at the packaged binary before install.
mkdir -p "$work/unit"
sed -e "s|/usr/bin/kumo-nats-relay|$work/deb/usr/bin/kumo-nats-relay|g" \
    "$work/deb/lib/systemd/system/$unit" >"$work/unit/$unit"
# verify also runs man(1) for Documentation=man:kumo-nats-relay(8): the packaged page.
verify_clean() {
    local out
    out=$(MANPATH=${2:-} systemd-analyze verify "$1" 2>&1) && [[ -z "$out" ]] || {
        echo "$out"
        return 1
    }
}
check "systemd-analyze verify: the packaged unit is clean, its man: page found" \
    verify_clean "$work/unit/$unit" "$work/deb/usr/share/man"

# unit_key SECTION KEY: every value of KEY in SECTION of the packaged unit.
unit_key() {
    awk -v sec="[$1]" -v key="$2" '/^\[/ { in_sec = ($0 == sec); next }
        in_sec && index($0, key "=") == 1 { print substr($0, length(key) + 2) }' \
        "$work/deb/lib/systemd/system/$unit"
}
check "the unit: Documentation=man:kumo-nats-relay(8)" \
    bash -c 'grep -qx "man:kumo-nats-relay(8)" <<<"$1"' _ "$(unit_key Unit Documentation)"
check "the unit: StartLimitIntervalSec= and StartLimitBurst= in [Unit], Restart=on-failure" \
    bash -c '[ -n "$1" ] && [ -n "$2" ] && [ "$3" = on-failure ]' _ \
    "$(unit_key Unit StartLimitIntervalSec)" "$(unit_key Unit StartLimitBurst)" \
    "$(unit_key Service Restart)"
# The exit-status contract: what the packaged binary exits with on a malformed
# configuration is exactly what RestartPreventExitStatus= lists, and no ExecStartPre=
# (whose status RestartPreventExitStatus= never sees) reports it instead.
printf 'spool:\n  dir: [unclosed\n' >"$work/malformed.yaml"
"$work/deb/usr/bin/kumo-nats-relay" -c "$work/malformed.yaml" >/dev/null 2>&1
config_status=$?
check "a malformed relay.yaml exits $config_status, which RestartPreventExitStatus= lists (78)" \
    bash -c '[ "$1" = 78 ] && [ "$2" = 78 ] && [ -z "$3" ]' _ "$config_status" \
    "$(unit_key Service RestartPreventExitStatus)" "$(unit_key Service ExecStartPre)"

# The manual page: its SYNOPSIS names every way to run the relay.
synopsis=$(MANWIDTH=200 man -l "$work/deb/usr/share/man/man8/$pkg.8.gz" 2>/dev/null |
    sed -n '/^SYNOPSIS/,/^[A-Z]/p')
check "man page SYNOPSIS: the daemon, --once, --check, status, deadletter replay" \
    bash -c 'for form in "kumo-nats-relay \[OPTIONS\]" "kumo-nats-relay --once" \
                 "kumo-nats-relay --check" "kumo-nats-relay status" \
                 "kumo-nats-relay deadletter replay"; do
                 grep -qE "^ +$form" <<<"$1" || { echo "no \"$form\" in: $1"; exit 1; }
             done' _ "$synopsis"

# sysusers.d: applied to an empty root, it makes the system user the scripts expect.
sysroot=$work/sysroot
mkdir -p "$sysroot/etc"
check "sysusers.d/kumo-nats-relay.conf: a system user, home /var/lib/kumo-nats-relay, nologin" \
    bash -c 'systemd-sysusers --root="$1" "$2" 2>/dev/null &&
             IFS=: read -r name _ uid gid gecos home shell <"$1/etc/passwd" &&
             [ "$name" = kumo-nats-relay ] && [ "$uid" -lt 1000 ] &&
             [ "$home" = /var/lib/kumo-nats-relay ] &&
             case "$shell" in */nologin) ;; *) exit 1 ;; esac &&
             grep -q "^kumo-nats-relay:x:$gid:" "$1/etc/group"' \
    _ "$sysroot" "$work/deb/usr/lib/sysusers.d/kumo-nats-relay.conf"

security_out=$(systemd-analyze security --offline=yes "$work/deb/lib/systemd/system/$unit" 2>&1)
exposure=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' <<<"$security_out")
echo "     exposure: ${exposure:-?} (systemd-analyze security --offline=yes, at most $max_exposure)"
grep '✗' <<<"$security_out" | sed 's/^/     exposure: /'
if [[ -n "$exposure" ]] && awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'; then
    pass "systemd-analyze security: exposure $exposure <= $max_exposure"
else
    fail "systemd-analyze security: exposure ${exposure:-unknown} <= $max_exposure" \
        "$(grep -v '^[[:space:]]*[✓✗]\|NAME' <<<"$security_out")"
fi

# ---------------------------------------------------------------------------------------
# Install, run, upgrade, remove, purge, with dpkg, on this machine.

install_checks() {
    local etc=/etc/kumo-nats-relay state=/var/lib/kumo-nats-relay
    local wants=/etc/systemd/system/multi-user.target.wants/$unit
    local out

    check "dpkg -i installs the .deb" dpkg -i "$deb"
    check "dpkg -s: install ok installed" \
        bash -c '[ "$(dpkg-query -W -f="\${Status}" "$1")" = "install ok installed" ]' _ "$pkg"
    check "installed: binary, unit, conffiles, README and examples in place" \
        test -x /usr/bin/kumo-nats-relay -a -f /lib/systemd/system/$unit -a -f $etc/relay.yaml \
        -a -f $etc/policy.lua -a -f /usr/share/doc/$pkg/README.md \
        -a -f /usr/share/doc/$pkg/examples/relay.yaml
    check "the system user kumo-nats-relay: system uid, no login shell, home in state dir" \
        bash -c 'IFS=: read -r _ _ uid _ _ home shell < <(getent passwd kumo-nats-relay) &&
                 [ "$uid" -lt 1000 ] && [ "$home" = /var/lib/kumo-nats-relay ] &&
                 case "$shell" in */nologin|*/false) ;; *) exit 1 ;; esac'
    check "kumo-nats-relay is in the kumod group" \
        bash -c 'id -nG kumo-nats-relay | tr " " "\n" | grep -qx kumod'
    check "$etc is 750 root:kumo-nats-relay (statoverride)" \
        bash -c '[ "$(stat -c "%a %U %G" "$1")" = "750 root kumo-nats-relay" ]' _ "$etc"
    check "$state exists, 750 kumo-nats-relay" \
        bash -c '[ "$(stat -c "%a %U %G" "$1")" = "750 kumo-nats-relay kumo-nats-relay" ]' _ "$state"
    check "the unit is enabled (multi-user.target.wants) on first install" test -L "$wants"
    check "kumo-nats-relay --version says $upstream_version" \
        bash -c 'kumo-nats-relay --version | grep -qw -- "$1"' _ "$upstream_version"
    check "kumo-nats-relay --check -c $etc/relay.yaml" \
        kumo-nats-relay --check -c $etc/relay.yaml
    check "the same as the service user, through its groups" \
        runuser -u kumo-nats-relay -- kumo-nats-relay --check -c $etc/relay.yaml
    check "relay.yaml leaves policy.script unset (built-in policy) and mentions policy.lua" \
        bash -c '! grep -qE "^[[:space:]]+script:" "$1" &&
                 grep -qE "^[[:space:]]*#[[:space:]]*script: /etc/kumo-nats-relay/policy.lua" "$1"' \
        _ "$etc/relay.yaml"
    sed -E 's|^([[:space:]]*)#[[:space:]]*script: (/etc/kumo-nats-relay/policy.lua)|\1script: \2|' \
        $etc/relay.yaml >"$work/relay-lua.yaml"
    check "policy.lua as shipped passes --check once enabled" \
        kumo-nats-relay --check -c "$work/relay-lua.yaml"
    check "systemd-analyze verify: the installed unit is clean" verify_clean /lib/systemd/system/$unit
    check "the installed man page: man 8 kumo-nats-relay" \
        bash -c 'man -w 8 kumo-nats-relay | grep -qx /usr/share/man/man8/kumo-nats-relay.8.gz'
    check "the installed sysusers.d file: systemd-sysusers has nothing left to create" \
        bash -c '! command -v systemd-sysusers >/dev/null ||
                 [ -z "$(systemd-sysusers --dry-run kumo-nats-relay.conf 2>&1)" ]' 

    # The dead-letter file as the relay leaves it, rotated the way cron's logrotate does.
    local dl=$state/deadletter
    install -d -m 0750 -o kumo-nats-relay -g kumo-nats-relay $dl
    install -m 0640 -o kumo-nats-relay -g kumo-nats-relay /dev/null $dl/deadletter.jsonl
    echo '{"segment":"x","start":0,"end":1,"reason":"r","line":"l\n"}' >>$dl/deadletter.jsonl
    check "logrotate -d: the installed snippet parses, no error, rotates deadletter.jsonl" \
        bash -c 'out=$(logrotate -d -f -s "$1/logrotate.state" /etc/logrotate.d/kumo-nats-relay 2>&1) &&
                 ! grep -qi "error" <<<"$out" && grep -q "rotating log $2/deadletter.jsonl" <<<"$out" ||
                 { echo "$out"; exit 1; }' _ "$work" "$dl"
    check "logrotate -f: deadletter.jsonl.1 kept uncompressed, a new deadletter.jsonl 640 kumo-nats-relay" \
        bash -c 'logrotate -f -s "$1/logrotate.state" /etc/logrotate.d/kumo-nats-relay &&
                 [ -s "$2/deadletter.jsonl.1" ] && [ ! -s "$2/deadletter.jsonl" ] &&
                 [ "$(stat -c "%a %U %G" "$2/deadletter.jsonl")" = "640 kumo-nats-relay kumo-nats-relay" ]' \
        _ "$work" "$dl"

    # Upgrade over itself: the postinst's upgrade path; an edited conffile is kept.
    echo "# edited by tests/packaging" >>$etc/relay.yaml
    echo "state" >$state/packaging-test
    check "dpkg -i again (upgrade path)" dpkg -i "$deb"
    check "upgrade keeps the edited relay.yaml" grep -qx "# edited by tests/packaging" $etc/relay.yaml
    check "upgrade keeps the unit enabled" test -L "$wants"

    check "dpkg -r removes the package" dpkg -r "$pkg"
    check "after remove: binary and unit gone" \
        test ! -e /usr/bin/kumo-nats-relay -a ! -e /lib/systemd/system/$unit
    check "after remove: the unit is disabled" test ! -L "$wants"
    check "after remove: configuration and state kept" \
        test -f $etc/relay.yaml -a -f $state/packaging-test

    check "dpkg -P purges the package" dpkg -P "$pkg"
    check "after purge: /etc/kumo-nats-relay and the state directory gone" \
        test ! -e $etc -a ! -e $state
    check "after purge: no statoverride, no deb-systemd-helper state, not known to dpkg" \
        bash -c '! dpkg-statoverride --list "$1" >/dev/null &&
                 ! ls -R /var/lib/systemd/deb-systemd-helper-enabled 2>/dev/null | grep -q kumo-nats-relay &&
                 ! dpkg-query -W kumo-nats-relay >/dev/null 2>&1' _ "$etc"
}

install_skip_reason=""
if [[ $(id -u) -ne 0 ]]; then
    install_skip_reason="not root"
else
    # One run at a time on a machine.
    exec 9>/run/lock/kumo-nats-relay-packaging-test.lock
    if ! flock -w 300 9; then
        fail "take the install lock: another packaging run held it for 5 minutes"
        install_skip_reason="no lock"
    elif dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv "not-installed"; then
        install_skip_reason="$pkg is installed on this machine (dpkg -P it to run them)"
    fi
fi

if [[ "$install_skip_reason" == "no lock" ]]; then
    :
elif [[ -n "$install_skip_reason" ]]; then
    skipped=$((skipped + 1))
    echo "skip install, upgrade, remove and purge checks: $install_skip_reason"
else
    user_existed=0
    getent passwd kumo-nats-relay >/dev/null && user_existed=1
    kumod_existed=0
    getent group kumod >/dev/null && kumod_existed=1
    installing=1
    [[ $kumod_existed -eq 1 ]] || groupadd --system kumod
    # kumod's spool, as KumoMTA makes it: --check refuses a spool.dir it cannot read.
    spool_existed=0
    [[ -d /var/log/kumomta ]] && spool_existed=1
    [[ $spool_existed -eq 1 ]] || install -d -m 0750 -g kumod /var/log/kumomta
    install_checks
    restore_machine
fi

summary
[[ $failed -eq 0 ]]
