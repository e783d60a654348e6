"""Shell completion scripts for chapiteauctl: commands, flags and live watcher names.

``chapiteauctl completion bash`` prints a bash script; ``completion zsh``
prints the same function loaded through zsh's ``bashcompinit``. Commands and
flags are written into the script from `CTL_COMMANDS`; watcher names are
asked at completion time with ``chapiteauctl list``, passing on the global
options already typed (``--endpoint``, CURVE keys), with a 2 s timeout.
"""

from __future__ import annotations

from collections.abc import Mapping

from chapiteau.ctl.commands import CTL_COMMANDS, NO_NAME_COMMANDS

SHELLS = ("bash", "zsh")

BASH_TEMPLATE = """\
# chapiteauctl completion for bash: eval "$(chapiteauctl completion bash)"
_chapiteauctl() {
    # Words split on blanks only (COMP_WORDS also splits tcp://host:port at the colons).
    local line="${COMP_LINE:0:$COMP_POINT}" words=() command="" given=() i positionals=0
    @SPLIT@
    [[ $line == *[[:space:]] ]] && words+=("")
    local last=$((${#words[@]} - 1))
    local cur="${words[last]}"
    for ((i = 1; i < last; i++)); do
        case "${words[i]}" in
            @WITH_VALUE@)
                [[ -z $command ]] && given+=("${words[i]}" "${words[i+1]}")
                ((i++)) ;;
            -*) ;;
            *) if [[ -z $command ]]; then command="${words[i]}"; else ((positionals++)); fi ;;
        esac
    done
    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "@GLOBAL_FLAGS@" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        case "$command" in
@FLAG_CASES@
        esac
        return 0
    fi
    ((positionals == 0)) || return 0
    case "$command" in
        help) COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "@SHELLS@" -- "$cur")) ;;
        @NO_NAME@) ;;
        *)
            local names
            names=$("${words[0]}" "${given[@]}" --timeout 2 list 2>/dev/null)
            COMPREPLY=($(compgen -W "${names//,/ }" -- "$cur")) ;;
    esac
    return 0
}
complete -F _chapiteauctl chapiteauctl
"""

SPLIT = {
    "bash": 'read -ra words <<< "$line"',
    # zsh runs the same function: arrays from 0 as in bash, the line split on blanks.
    "zsh": "setopt localoptions ksharrays; words=(${=line})",
}
ZSH_PREAMBLE = """\
# chapiteauctl completion for zsh: eval "$(chapiteauctl completion zsh)"
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit }
autoload -U +X bashcompinit && bashcompinit
"""


def script(shell: str, global_flags: Mapping[str, bool]) -> str:
    """The completion script for ``shell`` (one of `SHELLS`); ``global_flags``: the options
    given before the command, each with whether it takes a value."""
    commands = " ".join(sorted(CTL_COMMANDS))
    cases = []
    for command in CTL_COMMANDS.values():
        flags = [f"--{o.name}" for o in command.options]
        flags += [f"-{o.short}" for o in command.options if o.short]
        if flags:
            words = " ".join([*flags, "--help"])
            cases.append(
                f'            {command.name}) COMPREPLY=($(compgen -W "{words}" -- "$cur")) ;;'
            )
    cases.append('            *) COMPREPLY=($(compgen -W "--help" -- "$cur")) ;;')
    bash = (
        BASH_TEMPLATE.replace(
            "@WITH_VALUE@", "|".join(f for f, value in global_flags.items() if value)
        )
        .replace("@GLOBAL_FLAGS@", " ".join(global_flags))
        .replace("@COMMANDS@", commands)
        .replace("@FLAG_CASES@", "\n".join(cases))
        .replace("@SHELLS@", " ".join(SHELLS))
        .replace("@NO_NAME@", "|".join(sorted(NO_NAME_COMMANDS)))
        .replace("@SPLIT@", SPLIT[shell])
    )
    return ZSH_PREAMBLE + bash if shell == "zsh" else bash
