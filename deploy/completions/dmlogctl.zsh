#compdef dmlogctl

autoload -U is-at-least

_dmlogctl() {
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
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
'-V[Print version]' \
'--version[Print version]' \
":: :_dmlogctl_commands" \
"*::: :->dmlogctl" \
&& ret=0
    case $state in
    (dmlogctl)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-command-$line[1]:"
        case $line[1] in
            (status)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
(logs)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
(log)
_arguments "${_arguments_options[@]}" : \
'--width=[Characters per line of the region map]:WIDTH:_default' \
'--max-chars=[At most this many characters in the map (regions are grouped beyond)]:MAX_CHARS:_default' \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
':uuid -- The log'\''s uuid (the one in the mirror table):_default' \
&& ret=0
;;
(members)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
":: :_dmlogctl__subcmd__members_commands" \
"*::: :->members" \
&& ret=0

    case $state in
    (members)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-members-command-$line[1]:"
        case $line[1] in
            (add)
_arguments "${_arguments_options[@]}" : \
'--catch-up-timeout=[Seconds the new node has to receive the log as a learner; if it has not by then it is taken out again and nothing changes]:SECS:_default' \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
':id -- Its node id (never used before in this cluster):_default' \
':addr -- Its peer address, host\:port:_default' \
&& ret=0
;;
(remove)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
':id -- Its node id:_default' \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_dmlogctl__subcmd__members__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-members-help-command-$line[1]:"
        case $line[1] in
            (add)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(remove)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
        esac
    ;;
esac
;;
(resync)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
':uuid -- The log'\''s uuid:_default' \
&& ret=0
;;
(leader)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
":: :_dmlogctl__subcmd__leader_commands" \
"*::: :->leader" \
&& ret=0

    case $state in
    (leader)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-leader-command-$line[1]:"
        case $line[1] in
            (transfer)
_arguments "${_arguments_options[@]}" : \
'--socket=[The node'\''s admin socket]:SOCKET:_files' \
'--connect=[A node'\''s admin API over TCP (host\:port) instead of the socket\: needs --ca and a token]:CONNECT:_default' \
'--ca=[The cluster CA'\''s certificate, to trust the node (with --connect)]:CA:_files' \
'--token-file=[A file holding the admin token (with --connect)]:TOKEN_FILE:_files' \
'--json[Print JSON instead of text (read commands)]' \
'-h[Print help]' \
'--help[Print help]' \
':to -- The voter to lead:_default' \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_dmlogctl__subcmd__leader__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-leader-help-command-$line[1]:"
        case $line[1] in
            (transfer)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
        esac
    ;;
esac
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_dmlogctl__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-help-command-$line[1]:"
        case $line[1] in
            (status)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(logs)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(log)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(members)
_arguments "${_arguments_options[@]}" : \
":: :_dmlogctl__subcmd__help__subcmd__members_commands" \
"*::: :->members" \
&& ret=0

    case $state in
    (members)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-help-members-command-$line[1]:"
        case $line[1] in
            (add)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(remove)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
(resync)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(leader)
_arguments "${_arguments_options[@]}" : \
":: :_dmlogctl__subcmd__help__subcmd__leader_commands" \
"*::: :->leader" \
&& ret=0

    case $state in
    (leader)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:dmlogctl-help-leader-command-$line[1]:"
        case $line[1] in
            (transfer)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
(help)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
        esac
    ;;
esac
}

(( $+functions[_dmlogctl_commands] )) ||
_dmlogctl_commands() {
    local commands; commands=(
'status:Members, leader, term, commit index, replication lag, health. Exit status 1 when the node is not healthy' \
'logs:Every mirror log\: regions, dirty, out of sync, recovering, marks per node' \
'log:One mirror log in detail, with a map of its regions' \
'members:Membership changes (on the leader)' \
'resync:Resync every region of a mirror log (as after a crash)\: its kernels copy each region from the default leg once more' \
'leader:Leadership (on the leader)' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'dmlogctl commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help_commands] )) ||
_dmlogctl__subcmd__help_commands() {
    local commands; commands=(
'status:Members, leader, term, commit index, replication lag, health. Exit status 1 when the node is not healthy' \
'logs:Every mirror log\: regions, dirty, out of sync, recovering, marks per node' \
'log:One mirror log in detail, with a map of its regions' \
'members:Membership changes (on the leader)' \
'resync:Resync every region of a mirror log (as after a crash)\: its kernels copy each region from the default leg once more' \
'leader:Leadership (on the leader)' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'dmlogctl help commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__help_commands] )) ||
_dmlogctl__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help help commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__leader_commands] )) ||
_dmlogctl__subcmd__help__subcmd__leader_commands() {
    local commands; commands=(
'transfer:Hand leadership to another voter' \
    )
    _describe -t commands 'dmlogctl help leader commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__leader__subcmd__transfer_commands] )) ||
_dmlogctl__subcmd__help__subcmd__leader__subcmd__transfer_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help leader transfer commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__log_commands] )) ||
_dmlogctl__subcmd__help__subcmd__log_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help log commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__logs_commands] )) ||
_dmlogctl__subcmd__help__subcmd__logs_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help logs commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__members_commands] )) ||
_dmlogctl__subcmd__help__subcmd__members_commands() {
    local commands; commands=(
'add:Add a node\: it joins as a learner, catches up, then votes' \
'remove:Remove a node; its id is retired for good' \
    )
    _describe -t commands 'dmlogctl help members commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__members__subcmd__add_commands] )) ||
_dmlogctl__subcmd__help__subcmd__members__subcmd__add_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help members add commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__members__subcmd__remove_commands] )) ||
_dmlogctl__subcmd__help__subcmd__members__subcmd__remove_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help members remove commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__resync_commands] )) ||
_dmlogctl__subcmd__help__subcmd__resync_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help resync commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__help__subcmd__status_commands] )) ||
_dmlogctl__subcmd__help__subcmd__status_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl help status commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__leader_commands] )) ||
_dmlogctl__subcmd__leader_commands() {
    local commands; commands=(
'transfer:Hand leadership to another voter' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'dmlogctl leader commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__leader__subcmd__help_commands] )) ||
_dmlogctl__subcmd__leader__subcmd__help_commands() {
    local commands; commands=(
'transfer:Hand leadership to another voter' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'dmlogctl leader help commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__leader__subcmd__help__subcmd__help_commands] )) ||
_dmlogctl__subcmd__leader__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl leader help help commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__leader__subcmd__help__subcmd__transfer_commands] )) ||
_dmlogctl__subcmd__leader__subcmd__help__subcmd__transfer_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl leader help transfer commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__leader__subcmd__transfer_commands] )) ||
_dmlogctl__subcmd__leader__subcmd__transfer_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl leader transfer commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__log_commands] )) ||
_dmlogctl__subcmd__log_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl log commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__logs_commands] )) ||
_dmlogctl__subcmd__logs_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl logs commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members_commands] )) ||
_dmlogctl__subcmd__members_commands() {
    local commands; commands=(
'add:Add a node\: it joins as a learner, catches up, then votes' \
'remove:Remove a node; its id is retired for good' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'dmlogctl members commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members__subcmd__add_commands] )) ||
_dmlogctl__subcmd__members__subcmd__add_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl members add commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members__subcmd__help_commands] )) ||
_dmlogctl__subcmd__members__subcmd__help_commands() {
    local commands; commands=(
'add:Add a node\: it joins as a learner, catches up, then votes' \
'remove:Remove a node; its id is retired for good' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'dmlogctl members help commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members__subcmd__help__subcmd__add_commands] )) ||
_dmlogctl__subcmd__members__subcmd__help__subcmd__add_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl members help add commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members__subcmd__help__subcmd__help_commands] )) ||
_dmlogctl__subcmd__members__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl members help help commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members__subcmd__help__subcmd__remove_commands] )) ||
_dmlogctl__subcmd__members__subcmd__help__subcmd__remove_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl members help remove commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__members__subcmd__remove_commands] )) ||
_dmlogctl__subcmd__members__subcmd__remove_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl members remove commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__resync_commands] )) ||
_dmlogctl__subcmd__resync_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl resync commands' commands "$@"
}
(( $+functions[_dmlogctl__subcmd__status_commands] )) ||
_dmlogctl__subcmd__status_commands() {
    local commands; commands=()
    _describe -t commands 'dmlogctl status commands' commands "$@"
}

if [ "$funcstack[1]" = "_dmlogctl" ]; then
    _dmlogctl "$@"
else
    compdef _dmlogctl dmlogctl
fi
