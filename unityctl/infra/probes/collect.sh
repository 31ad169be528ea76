#!/bin/sh
# unityctl collect.sh: one read-only snapshot of a server's health, in one SSH round trip.
#
# Runs under any POSIX sh (dash, busybox ash, bash --posix) and needs nothing installed but
# the shell: every external tool is optional, and a missing tool or missing permission becomes
# a status in its section, never an abort. It changes nothing on the machine.
#
# OUTPUT FORMAT (read by unityctl/infra/probes/sections.py)
#
#   @@unityctl:collect version=1 uid=N user=NAME sudo=yes|no|root@@     first line
#   @@unityctl:section NAME rc=N [key=value ...]@@                       before each section body
#   ...body: the command's stdout and stderr, verbatim...
#   @@unityctl:end@@                                                      last line (absent = cut short)
#
#   rc       exit code of the command (127 when the tool is not installed).
#   status=  absent only when the command ran:  ok (default, not written)
#            not-installed   the tool is not on PATH (rc=127, body names the tool)
#            needs-root      the tool ran but was refused for lack of privileges
#            absent          the file or kernel feature does not exist (e.g. no md driver)
#   via=     how it ran: root | sudo (sudo -n, never prompts) | user, or which fallback
#            produced the body (ss | netstat | proc, ps | proc)
#   bin=     absolute path of the tool, for the sudoers hint
#   tool=    name of a missing tool;  dev= type= for per-device SMART sections
#   A body line that would itself start with "@@unityctl:" is written with one leading space.
#
# SECTIONS (in this order)
#   os_release        /etc/os-release (or /usr/lib/os-release)
#   uname             uname -srm (fallback: /proc/sys/kernel/{ostype,osrelease})
#   uptime            /proc/uptime
#   cpu_count         getconf _NPROCESSORS_ONLN | nproc | count of "processor" in /proc/cpuinfo
#   loadavg           /proc/loadavg
#   meminfo           /proc/meminfo
#   df                df -P -k
#   mounts            /proc/mounts (tells pseudo filesystems apart in df)
#   mdstat            /proc/mdstat (status=absent when the md driver is not loaded)
#   mdadm_detail:mdN  mdadm --detail /dev/mdN, one per array in /proc/mdstat
#   smart_scan        smartctl --scan -j
#   smart:DEV[:TYPE]  smartctl -x -j --nocheck=standby [-d TYPE] DEV, one per scanned device
#                     (":TYPE" only for devices behind a controller, e.g. megaraid,0)
#   zpool_list        zpool list -Hp
#   zpool_status      zpool status -p
#   sockets           ss -H -ltnpx | ss -ltnpx | netstat -lntpx | /proc/net/{tcp,tcp6,unix}
#                     (the proc fallback prints "# /proc/net/FILE" before each file)
#   processes         ps -e -o pid=,comm= | "PID COMM" lines read from /proc/*/comm
#   db_versions       "COMM<TAB>EXE<TAB>first line of EXE --version" for each running database server
#                     binary (postgres, mysqld, mariadbd, redis-server, mongod); PostgreSQL tells
#                     no version on the wire before a login, its binary does. Needs /proc/PID/exe
#                     to be readable (root, or the same user); otherwise the section is empty.
#
# smartctl, mdadm and zpool run directly as root; otherwise "sudo -n" is tried (it never
# prompts), then the plain command. Slow tools run under "timeout" when it exists, so a hung
# disk or a stale NFS mount cannot hang the collection.

LC_ALL=C
export LC_ALL
# sbin directories are often missing from a non-login SSH session's PATH.
# UNITYCTL_COLLECT_PATH replaces PATH entirely (tests use it to simulate a bare machine).
if [ -n "${UNITYCTL_COLLECT_PATH:-}" ]; then
    PATH=$UNITYCTL_COLLECT_PATH
else
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
fi
export PATH

COLLECT_VERSION=1
TIMEOUT_SECONDS=${UNITYCTL_COLLECT_TIMEOUT:-120}

have() { command -v "$1" >/dev/null 2>&1; }

# GNU and recent busybox accept "timeout SECS CMD"; very old busybox wants "-t SECS": probe it.
TO=""
if have timeout && timeout 5 true >/dev/null 2>&1; then
    TO="timeout $TIMEOUT_SECONDS"
fi

UID_NOW=$(id -u 2>/dev/null)
USER_NOW=$(id -un 2>/dev/null)
[ -n "$UID_NOW" ] || UID_NOW=unknown
[ -n "$USER_NOW" ] || USER_NOW=unknown
IS_ROOT=0
[ "$UID_NOW" = 0 ] && IS_ROOT=1
HAVE_SUDO=no
if [ "$IS_ROOT" = 1 ]; then
    HAVE_SUDO=root
elif have sudo; then
    HAVE_SUDO=yes
fi

# emit NAME RC ATTRS  -- header, then the body held in $OUT.
emit() {
    printf '@@unityctl:section %s rc=%s%s@@\n' "$1" "$2" "$3"
    if [ -n "$OUT" ]; then
        case "$OUT" in
            *"@@unityctl:"*)
                # Escape lines that would look like our own markers (a hostile mount name or
                # command line must not forge a section).
                printf '%s\n' "$OUT" | while IFS= read -r _l || [ -n "$_l" ]; do
                    case "$_l" in
                        "@@unityctl:"*) printf ' %s\n' "$_l" ;;
                        *) printf '%s\n' "$_l" ;;
                    esac
                done
                ;;
            *) printf '%s\n' "$OUT" ;;
        esac
    fi
}

# readfile PATH  -- print a file using only the shell (no cat needed); rc 1 when unreadable.
readfile() {
    [ -r "$1" ] || return 1
    while IFS= read -r _l || [ -n "$_l" ]; do
        printf '%s\n' "$_l"
    done < "$1"
}

# file_section NAME PATH...  -- the first readable PATH, or status=absent.
file_section() {
    _name=$1
    shift
    for _f in "$@"; do
        if [ -r "$_f" ]; then
            OUT=$(readfile "$_f")
            emit "$_name" 0 " path=$_f"
            return
        fi
    done
    OUT="not present: $*"
    emit "$_name" 1 " status=absent"
}

# missing TOOL NAME  -- section for a tool that is not installed.
missing() {
    OUT="$1: not installed"
    emit "$2" 127 " status=not-installed tool=$1"
}

# run NAME CMD...  -- a command that needs no privileges.
run() {
    _name=$1
    shift
    if ! have "$1"; then
        missing "$1" "$_name"
        return
    fi
    OUT=$($TO "$@" 2>&1)
    _rc=$?
    emit "$_name" "$_rc" ""
}

# denied TEXT  -- true when TEXT reads like a refusal for lack of privileges.
denied() {
    case "$1" in
        *"Permission denied"*|*"permission denied"*|*"Operation not permitted"*|\
        *"must be root"*|*"must be run as root"*|*"Only root"*|*"only root"*|\
        *"requires root"*|*"are not root"*|*"insufficient privileges"*) return 0 ;;
    esac
    return 1
}

# priv CMD...  -- run as root if we can; sets OUT, RC, VIA, PSTATUS, BIN.
priv() {
    BIN=$(command -v "$1" 2>/dev/null)
    PSTATUS=ok
    if [ "$IS_ROOT" = 1 ]; then
        OUT=$($TO "$@" 2>&1)
        RC=$?
        VIA=root
        return
    fi
    if [ "$HAVE_SUDO" = yes ]; then
        # Full path: sudoers rules name absolute paths, and secure_path may differ from ours.
        shift
        _sout=$($TO sudo -n "$BIN" "$@" 2>&1)
        _src=$?
        case "$_sout" in
            *"password is required"*|*"not allowed to execute"*|*"terminal is required"*|\
            *"may not run sudo"*|*"not in the sudoers"*|*"no tty present"*) : ;;
            *)
                OUT=$_sout
                RC=$_src
                VIA=sudo
                return
                ;;
        esac
        set -- "$BIN" "$@"
    fi
    OUT=$($TO "$@" 2>&1)
    RC=$?
    VIA=user
    if [ "$RC" -ne 0 ] && denied "$OUT"; then
        PSTATUS=needs-root
    fi
}

# run_priv NAME EXTRA_ATTRS CMD...  -- priv + emit, or not-installed.
run_priv() {
    _name=$1
    _extra=$2
    shift 2
    if ! have "$1"; then
        missing "$1" "$_name"
        return
    fi
    priv "$@"
    _attrs=" via=$VIA bin=$BIN$_extra"
    [ "$PSTATUS" = ok ] || _attrs=" status=$PSTATUS$_attrs"
    emit "$_name" "$RC" "$_attrs"
}

printf '@@unityctl:collect version=%s uid=%s user=%s sudo=%s@@\n' \
    "$COLLECT_VERSION" "$UID_NOW" "$USER_NOW" "$HAVE_SUDO"

# --- system -----------------------------------------------------------------------------------
file_section os_release /etc/os-release /usr/lib/os-release

if have uname; then
    run uname uname -srm
else
    OUT=$(readfile /proc/sys/kernel/ostype; readfile /proc/sys/kernel/osrelease)
    emit uname 0 " via=proc"
fi

file_section uptime /proc/uptime

OUT=""
if have getconf && OUT=$(getconf _NPROCESSORS_ONLN 2>/dev/null) && [ -n "$OUT" ]; then
    emit cpu_count 0 " via=getconf"
elif have nproc && OUT=$(nproc 2>/dev/null) && [ -n "$OUT" ]; then
    emit cpu_count 0 " via=nproc"
elif [ -r /proc/cpuinfo ]; then
    _n=0
    while IFS= read -r _l || [ -n "$_l" ]; do
        case "$_l" in processor*) _n=$((_n + 1)) ;; esac
    done < /proc/cpuinfo
    OUT=$_n
    emit cpu_count 0 " via=cpuinfo"
else
    OUT="no getconf, nproc or /proc/cpuinfo"
    emit cpu_count 1 " status=absent"
fi

file_section loadavg /proc/loadavg
file_section meminfo /proc/meminfo
run df df -P -k
file_section mounts /proc/mounts

# --- software RAID ----------------------------------------------------------------------------
if [ -r /proc/mdstat ]; then
    file_section mdstat /proc/mdstat
    MD_ARRAYS=""
    while IFS= read -r _l || [ -n "$_l" ]; do
        # "md0 : active raid1 ..." -- the second word is the colon. No globbing while
        # splitting: progress bars like "[==>...]" are glob patterns.
        set -f
        set -- $_l
        set +f
        [ "$#" -ge 2 ] && [ "$2" = ":" ] && case "$1" in md*) MD_ARRAYS="$MD_ARRAYS $1" ;; esac
    done < /proc/mdstat
    for _md in $MD_ARRAYS; do
        if [ -e "/dev/$_md" ]; then
            run_priv "mdadm_detail:$_md" "" mdadm --detail "/dev/$_md"
        fi
    done
else
    OUT="/proc/mdstat not present (md driver not loaded)"
    emit mdstat 1 " status=absent"
fi

# --- SMART ------------------------------------------------------------------------------------
if have smartctl; then
    run_priv smart_scan "" smartctl --scan -j
    # The plain --scan output is easier to read in sh than JSON:
    #   /dev/sda -d sat # /dev/sda [SAT], ATA device
    # Its exit code is not trusted: only lines that start with /dev/ are used.
    priv smartctl --scan
    if [ -n "$OUT" ]; then
        printf '%s\n' "$OUT" | while read -r _dev _dflag _dtype _rest; do
            case "$_dev" in /dev/*) : ;; *) continue ;; esac
            [ "$_dflag" = "-d" ] || _dtype=""
            _secname="smart:$_dev"
            case "$_dtype" in *,*) _secname="smart:$_dev:$_dtype" ;; esac
            if [ -n "$_dtype" ]; then
                run_priv "$_secname" " dev=$_dev type=$_dtype" \
                    smartctl -x -j --nocheck=standby -d "$_dtype" "$_dev"
            else
                run_priv "$_secname" " dev=$_dev" smartctl -x -j --nocheck=standby "$_dev"
            fi
        done
    fi
else
    missing smartctl smart_scan
fi

# --- ZFS --------------------------------------------------------------------------------------
if have zpool; then
    run_priv zpool_list "" zpool list -Hp
    run_priv zpool_status "" zpool status -p
else
    missing zpool zpool_list
    missing zpool zpool_status
fi

# --- listening sockets ------------------------------------------------------------------------
SOCK_DONE=0
if have ss; then
    OUT=$($TO ss -H -ltnpx 2>&1)
    _rc=$?
    if [ "$_rc" -ne 0 ]; then
        # iproute2 before 4.x has no -H: the header line is then kept in the body.
        OUT=$($TO ss -ltnpx 2>&1)
        _rc=$?
    fi
    if [ "$_rc" -eq 0 ]; then
        emit sockets 0 " via=ss"
        SOCK_DONE=1
    fi
fi
if [ "$SOCK_DONE" = 0 ] && have netstat; then
    OUT=$($TO netstat -lntpx 2>&1)
    _rc=$?
    if [ "$_rc" -eq 0 ]; then
        emit sockets 0 " via=netstat"
        SOCK_DONE=1
    fi
fi
if [ "$SOCK_DONE" = 0 ]; then
    OUT=$(for _f in tcp tcp6 unix; do
        if [ -r "/proc/net/$_f" ]; then
            printf '# /proc/net/%s\n' "$_f"
            readfile "/proc/net/$_f"
        fi
    done)
    if [ -n "$OUT" ]; then
        emit sockets 0 " via=proc"
    else
        OUT="no ss, no netstat, no /proc/net"
        emit sockets 127 " status=not-installed tool=ss"
    fi
fi

# --- processes --------------------------------------------------------------------------------
PS_DONE=0
if have ps; then
    OUT=$(ps -e -o pid=,comm= 2>/dev/null)
    if [ "$?" -eq 0 ] && [ -n "$OUT" ]; then
        emit processes 0 " via=ps"
        PS_DONE=1
    fi
fi
if [ "$PS_DONE" = 0 ]; then
    # busybox ps rejects -e: read /proc directly (a process may vanish mid-loop; ignore it).
    OUT=$(for _d in /proc/[0-9]*; do
        [ -r "$_d/comm" ] || continue
        IFS= read -r _c < "$_d/comm" 2>/dev/null || continue
        printf '%s %s\n' "${_d#/proc/}" "$_c"
    done 2>/dev/null)
    if [ -n "$OUT" ]; then
        emit processes 0 " via=proc"
    else
        OUT="no ps and no readable /proc"
        emit processes 127 " status=not-installed tool=ps"
    fi
fi

# --- db_versions --------------------------------------------------------------------------------
OUT=$(for _d in /proc/[0-9]*; do
    [ -r "$_d/comm" ] || continue
    IFS= read -r _c < "$_d/comm" 2>/dev/null || continue
    case "$_c" in postgres|postmaster|mysqld|mariadbd|redis-server|mongod) ;; *) continue ;; esac
    _e=$(readlink "$_d/exe" 2>/dev/null) || continue
    [ -n "$_e" ] && [ -x "$_e" ] && printf '%s\t%s\n' "$_c" "$_e"
done 2>/dev/null | sort -u | while IFS="$(printf '\t')" read -r _c _e; do
    if have timeout; then _v=$(timeout 5 "$_e" --version 2>/dev/null | head -n 1)
    else _v=$("$_e" --version 2>/dev/null | head -n 1); fi
    [ -n "$_v" ] && printf '%s\t%s\t%s\n' "$_c" "$_e" "$_v"
done)
emit db_versions 0 ""

printf '@@unityctl:end@@\n'
exit 0
