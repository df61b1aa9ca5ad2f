#compdef dmlogd

autoload -U is-at-least

_dmlogd() {
    typeset -A opt_args
    typeset -a _arguments_options
    local ret=1

    if is-at-least 5.2; then
        _arguments_options=(-s -S -C)
    else
        _arguments_options=(-s -C)
    fi

    local context curcontext="$curcontext" state line
    _arguments "${_arguments_options[@]}" : \
'--config=[TOML configuration file]:CONFIG:_files' \
'--cluster=[The cluster'\''s name (overrides the file; default dmlogd)]:CLUSTER:_default' \
'--id=[This node'\''s id (overrides the file)]:ID:_default' \
'--data-dir=[Data directory (overrides the file)]:DATA_DIR:_files' \
'--listen=[gRPC listen address host\:port (overrides the file)]:LISTEN:_default' \
'*--member=[An initial member ID=HOST\:PORT (repeat; overrides the file'\''s)]:MEMBERS:_default' \
'--kernel=[Kernel transport\: netlink or unix\:<path>]:KERNEL:_default' \
'--fence=[Fence action\: reboot, suspend or command\:<program> \[args…\]]:FENCE:_default' \
'--admin-socket=[The admin API'\''s Unix socket (default\: admin.sock in the data dir)]:ADMIN_SOCKET:_files' \
'--metrics=[Serve Prometheus metrics at http\://ADDR/metrics]:METRICS:_default' \
'--incarnation=[The kernel'\''s boot identity (default\: from /proc/sys/kernel/random/boot_id). For simulated kernels only]:INCARNATION:_default' \
'--check-config[Check the configuration and exit\: 0 if it is valid, else status 2 and one line naming the problem]' \
'--json[Log as JSON lines instead of plain text]' \
'-h[Print help]' \
'--help[Print help]' \
'-V[Print version]' \
'--version[Print version]' \
":: :_dmlogd_commands" \
"*::: :->dmlogd" \
&& ret=0
    case $state in
    (dmlogd)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogd-command-$line[1]:"
        case $line[1] in
            (wake-read)
_arguments "${_arguments_options[@]}" : \
'-h[Print help]' \
'--help[Print help]' \
':device:_files' \
&& ret=0
;;
(force-new-cluster)
_arguments "${_arguments_options[@]}" : \
'--force[Do it\: the other members are down and will not start again with their current data directories]' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
        esac
    ;;
esac
}

(( $+functions[_dmlogd_commands] )) ||
_dmlogd_commands() {
    local commands; commands=(
'wake-read:Read the last 4 KiB of a mirror with O_DIRECT, to wake its idle recovery (run by the daemon itself, as a separate process)' \
'force-new-cluster:Recover from a lost majority\: with this node'\''s daemon stopped, make it the only voter of its cluster (the others are added back later as new, empty nodes). Every other member must be gone for good or wiped first; without --force it only says what it would do' \
    )
    _describe -t commands 'dmlogd commands' commands "$@"
}
(( $+functions[_dmlogd__subcmd__force-new-cluster_commands] )) ||
_dmlogd__subcmd__force-new-cluster_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogd force-new-cluster commands' commands "$@"
}
(( $+functions[_dmlogd__subcmd__wake-read_commands] )) ||
_dmlogd__subcmd__wake-read_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogd wake-read commands' commands "$@"
}

if [ "$funcstack[1]" = "_dmlogd" ]; then
    _dmlogd "$@"
else
    compdef _dmlogd dmlogd
fi
