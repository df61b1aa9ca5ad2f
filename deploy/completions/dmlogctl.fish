# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dmlogctl_global_optspecs
    string join \n socket= connect= ca= token-file= json h/help V/version
end

function __fish_dmlogctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dmlogctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dmlogctl_using_subcommand
    set -l cmd (__fish_dmlogctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -s V -l version -d 'Print version'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "status" -d 'Members, leader, term, commit index, replication lag, health. Exit status 1 when the node is not healthy'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "logs" -d 'Every mirror log: regions, dirty, out of sync, recovering, marks per node'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "log" -d 'One mirror log in detail, with a map of its regions'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "members" -d 'Membership changes (on the leader)'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "resync" -d 'Resync every region of a mirror log (as after a crash): its kernels copy each region from the default leg once more'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "leader" -d 'Leadership (on the leader)'
complete -c dmlogctl -n "__fish_dmlogctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand status" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand status" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand status" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand status" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand status" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand status" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand logs" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand logs" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand logs" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand logs" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand logs" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand logs" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l width -d 'Characters per line of the region map' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l max-chars -d 'At most this many characters in the map (regions are grouped beyond)' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand log" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -f -a "add" -d 'Add a node: it joins as a learner, catches up, then votes'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -f -a "remove" -d 'Remove a node; its id is retired for good'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and not __fish_seen_subcommand_from add remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -l catch-up-timeout -d 'Seconds the new node has to receive the log as a learner; if it has not by then it is taken out again and nothing changes' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from remove" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from remove" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from remove" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from remove" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from remove" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add a node: it joins as a learner, catches up, then votes'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a node; its id is retired for good'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand members; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand resync" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand resync" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand resync" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand resync" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand resync" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand resync" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -f -a "transfer" -d 'Hand leadership to another voter'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and not __fish_seen_subcommand_from transfer help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from transfer" -l socket -d 'The node\'s admin socket' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from transfer" -l connect -d 'A node\'s admin API over TCP (host:port) instead of the socket: needs --ca and a token' -r
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from transfer" -l ca -d 'The cluster CA\'s certificate, to trust the node (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from transfer" -l token-file -d 'A file holding the admin token (with --connect)' -r -F
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from transfer" -l json -d 'Print JSON instead of text (read commands)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from transfer" -s h -l help -d 'Print help'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from help" -f -a "transfer" -d 'Hand leadership to another voter'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand leader; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "status" -d 'Members, leader, term, commit index, replication lag, health. Exit status 1 when the node is not healthy'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "logs" -d 'Every mirror log: regions, dirty, out of sync, recovering, marks per node'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "log" -d 'One mirror log in detail, with a map of its regions'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "members" -d 'Membership changes (on the leader)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "resync" -d 'Resync every region of a mirror log (as after a crash): its kernels copy each region from the default leg once more'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "leader" -d 'Leadership (on the leader)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and not __fish_seen_subcommand_from status logs log members resync leader help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and __fish_seen_subcommand_from members" -f -a "add" -d 'Add a node: it joins as a learner, catches up, then votes'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and __fish_seen_subcommand_from members" -f -a "remove" -d 'Remove a node; its id is retired for good'
complete -c dmlogctl -n "__fish_dmlogctl_using_subcommand help; and __fish_seen_subcommand_from leader" -f -a "transfer" -d 'Hand leadership to another voter'
