import { Argument, type Command } from 'commander';

/**
 * `keyops completion bash|zsh`: a completion script generated at run time from the commander
 * tree (subcommands, aliases, options, option and argument choices), so it lists exactly what
 * this keyops accepts and never goes stale. Hidden commands and options stay hidden.
 */
export function registerCompletionCommand(program: Command): void {
  program
    .command('completion')
    .description('print a shell completion script (bash or zsh) for keyops')
    .addArgument(new Argument('<shell>', 'the shell to complete in').choices(['bash', 'zsh']))
    .addHelpText(
      'after',
      `
Examples, to install it (completes the keyops command on PATH, e.g. after npm link or npm install -g):
  source <(keyops completion bash)                       # bash, this shell only
  echo 'source <(keyops completion bash)' >> ~/.bashrc   # bash, every new shell
  echo 'source <(keyops completion zsh)' >> ~/.zshrc     # zsh, every new shell (after its compinit)
  mkdir -p ~/.zfunc && keyops completion zsh > ~/.zfunc/_keyops
                                  # zsh, as a file: with fpath=(~/.zfunc $fpath) before compinit`,
    )
    .action((shell: 'bash' | 'zsh', _opts: unknown, cmd: Command) => {
      let root = cmd;
      while (root.parent) root = root.parent;
      const nodes = completionTree(root);
      process.stdout.write(shell === 'bash' ? bashScript(root.name(), nodes) : zshScript(root.name(), nodes));
    });
}

interface CompletionOption {
  flags: string[];
  description: string;
  takesValue: boolean;
  choices: string[];
}

/** One command of the tree: `path` is its words after the program name ('' for the program). */
export interface CompletionNode {
  path: string;
  commands: { names: string[]; description: string }[];
  /** Its own options and those of its ancestors (commander accepts program options after a subcommand). */
  options: CompletionOption[];
  /** Choices of each positional argument; the last repeats when it is variadic. */
  args: string[][];
  variadic: boolean;
}

const firstLine = (text: string) => text.split('\n')[0]?.trim() ?? '';

export function completionTree(root: Command): CompletionNode[] {
  const nodes: CompletionNode[] = [];
  const visit = (cmd: Command, path: string, inherited: CompletionOption[], helpOf: string[] | undefined) => {
    const help = cmd.createHelp();
    const own: CompletionOption[] = help.visibleOptions(cmd).map((o) => ({
      flags: [o.short, o.long].filter((f): f is string => !!f),
      description: firstLine(o.description),
      takesValue: o.required || o.optional,
      choices: o.argChoices ?? [],
    }));
    const ownFlags = new Set(own.flatMap((o) => o.flags));
    const options = [...own, ...inherited.filter((o) => !o.flags.some((f) => ownFlags.has(f)))];
    const subcommands = help.visibleCommands(cmd);
    nodes.push({
      path,
      commands: subcommands.map((c) => ({ names: [c.name(), ...c.aliases()], description: firstLine(help.subcommandDescription(c)) })),
      options,
      // Commander's implicit \`help [command]\` takes a sibling's name.
      args: helpOf ? [helpOf] : cmd.registeredArguments.map((a) => a.argChoices ?? []),
      variadic: cmd.registeredArguments.at(-1)?.variadic ?? false,
    });
    const names = cmd.commands.filter((c) => subcommands.includes(c)).map((c) => c.name());
    for (const sub of subcommands) visit(sub, path ? `${path} ${sub.name()}` : sub.name(), options, cmd.commands.includes(sub) ? undefined : names);
  };
  visit(root, '', [], undefined);
  return nodes;
}

/** A word in single quotes for bash and zsh. */
const quote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`;
const shellName = (name: string) => name.replace(/[^A-Za-z0-9_]/g, '_');

/**
 * The case arms both scripts share: `spec` sets the node's subcommands, options and value-taking
 * options; `sub` maps a word to the subcommand it names; `choices` gives the choices of an
 * option value (`PATH|--flag`) or of a positional argument (`PATH|#N`).
 */
function caseArms(nodes: CompletionNode[], fn: string, zsh: boolean) {
  const list = (words: string[]) => (zsh ? `(${words.map(quote).join(' ')})` : quote(words.join(' ')));
  const describe = (name: string, description: string) => `${name.replace(/[\\:]/g, '\\$&')}:${description}`;
  const spec = nodes.map((n) => {
    const cmds = zsh ? n.commands.flatMap((c) => c.names.map((name) => describe(name, c.description))) : n.commands.flatMap((c) => c.names);
    const opts = zsh ? n.options.flatMap((o) => o.flags.map((f) => describe(f, o.description))) : n.options.flatMap((o) => o.flags);
    const vals = n.options.filter((o) => o.takesValue).flatMap((o) => o.flags);
    return `    ${quote(n.path)}) ${fn}_cmds=${list(cmds)}; ${fn}_opts=${list(opts)}; ${fn}_vals=${list(vals)}; ${fn}_nargs=${n.args.length}; ${fn}_variadic=${n.variadic ? 1 : 0} ;;`;
  });
  const sub = nodes.flatMap((n) =>
    n.commands.flatMap((c) => c.names.map((name) => `    ${quote(`${n.path}|${name}`)}) ${fn}_next=${quote(n.path ? `${n.path} ${c.names[0]}` : (c.names[0] ?? ''))} ;;`)),
  );
  const choices = nodes.flatMap((n) => [
    ...n.options.filter((o) => o.takesValue && o.choices.length).flatMap((o) => o.flags.map((f) => `    ${quote(`${n.path}|${f}`)}) ${fn}_list=${list(o.choices)} ;;`)),
    ...n.args.flatMap((choices, i) => (choices.length ? [`    ${quote(`${n.path}|#${i}`)}) ${fn}_list=${list(choices)} ;;`] : [])),
  ]);
  return { spec: spec.join('\n'), sub: sub.join('\n'), choices: choices.join('\n') };
}

export function bashScript(program: string, nodes: CompletionNode[]): string {
  const fn = `__${shellName(program)}`;
  const arms = caseArms(nodes, fn, false);
  return `# bash completion for ${program}, generated by \`${program} completion bash\`.
# Install: source <(${program} completion bash)

${fn}_spec() {
  ${fn}_cmds=''; ${fn}_opts=''; ${fn}_vals=''; ${fn}_nargs=0; ${fn}_variadic=0
  case "$1" in
${arms.spec}
  esac
}

${fn}_sub() {
  ${fn}_next=''
  case "$1|$2" in
${arms.sub}
  esac
}

${fn}_choices() {
  ${fn}_list=''
  case "$1" in
${arms.choices || "    '') ;;"}
  esac
}

_${shellName(program)}() {
  local cur=\${COMP_WORDS[COMP_CWORD]} cmdpath='' w i expect='' dashdash='' npos=0
  local ${fn}_cmds ${fn}_opts ${fn}_vals ${fn}_nargs ${fn}_variadic ${fn}_next ${fn}_list
  # --opt=value: bash splits it at '=' (COMP_WORDBREAKS) into --opt, = and value.
  if [[ $cur == = ]]; then cur=''; fi
  for ((i = 1; i <= COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    if [[ -z $dashdash && $w == = ]]; then expect=\${COMP_WORDS[i - 1]}; continue; fi
    ((i == COMP_CWORD)) && break
    if [[ -n $expect ]]; then expect=''; continue; fi
    if [[ -z $dashdash ]]; then
      case $w in
        --) dashdash=1; continue ;;
        -?*)
          ${fn}_spec "$cmdpath"
          [[ " $${fn}_vals " == *" $w "* ]] && expect=$w
          continue
          ;;
      esac
      ${fn}_sub "$cmdpath" "$w"
      if [[ -n $${fn}_next ]]; then cmdpath=$${fn}_next npos=0; continue; fi
    fi
    npos=$((npos + 1))
  done
  ${fn}_spec "$cmdpath"
  COMPREPLY=()
  if [[ -n $expect ]]; then
    # An option's value: its choices, else file names (complete -o default).
    ${fn}_choices "$cmdpath|$expect"
    [[ -n $${fn}_list ]] && COMPREPLY=($(compgen -W "$${fn}_list" -- "$cur"))
    return 0
  fi
  if [[ -z $dashdash && $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$${fn}_opts" -- "$cur"))
    return 0
  fi
  if ((${fn}_variadic && npos >= ${fn}_nargs)); then npos=$((${fn}_nargs - 1)); fi
  ${fn}_choices "$cmdpath|#$npos"
  [[ -n $dashdash ]] && ${fn}_cmds=''
  COMPREPLY=($(compgen -W "$${fn}_cmds $${fn}_list" -- "$cur"))
  return 0
}

complete -o default -F _${shellName(program)} ${program}
`;
}

export function zshScript(program: string, nodes: CompletionNode[]): string {
  const fn = `__${shellName(program)}`;
  const arms = caseArms(nodes, fn, true);
  return `#compdef ${program}
# zsh completion for ${program}, generated by \`${program} completion zsh\`.
# Install: source <(${program} completion zsh) in ~/.zshrc after compinit, or save it as _${program}
# in a directory of $fpath.

${fn}_spec() {
  ${fn}_cmds=(); ${fn}_opts=(); ${fn}_vals=(); ${fn}_nargs=0; ${fn}_variadic=0
  case "$1" in
${arms.spec}
  esac
}

${fn}_sub() {
  ${fn}_next=''
  case "$1|$2" in
${arms.sub}
  esac
}

${fn}_choices() {
  ${fn}_list=()
  case "$1" in
${arms.choices || "    '') ;;"}
  esac
}

_${shellName(program)}() {
  local cur=\${words[CURRENT]} cmdpath='' w expect='' dashdash='' npos=0
  local -i i
  local -a ${fn}_cmds ${fn}_opts ${fn}_vals ${fn}_list
  local ${fn}_nargs ${fn}_variadic ${fn}_next
  for ((i = 2; i < CURRENT; i++)); do
    w=\${words[i]}
    if [[ -n $expect ]]; then expect=''; continue; fi
    if [[ -z $dashdash ]]; then
      case $w in
        --) dashdash=1; continue ;;
        -*=*) continue ;;
        -?*)
          ${fn}_spec "$cmdpath"
          (( \${${fn}_vals[(Ie)$w]} )) && expect=$w
          continue
          ;;
      esac
      ${fn}_sub "$cmdpath" "$w"
      if [[ -n $${fn}_next ]]; then cmdpath=$${fn}_next npos=0; continue; fi
    fi
    npos=$((npos + 1))
  done
  ${fn}_spec "$cmdpath"
  if [[ -z $expect && -z $dashdash && $cur == -*=* ]]; then
    expect=\${cur%%=*}
    compset -P '*='
  fi
  if [[ -n $expect ]]; then
    ${fn}_choices "$cmdpath|$expect"
    if (( \${#${fn}_list} )); then compadd -a ${fn}_list; else _files; fi
    return
  fi
  if [[ -z $dashdash && $cur == -* ]]; then
    _describe -t options 'option' ${fn}_opts
    return
  fi
  if (( ${fn}_variadic && npos >= ${fn}_nargs )); then npos=$((${fn}_nargs - 1)); fi
  ${fn}_choices "$cmdpath|#$npos"
  local -i offered=0
  if [[ -z $dashdash ]] && (( \${#${fn}_cmds} )); then _describe -t commands 'command' ${fn}_cmds && offered=1; fi
  if (( \${#${fn}_list} )); then compadd -a ${fn}_list && offered=1; fi
  (( offered )) || _files
}

if [[ \${funcstack[1]} == _${shellName(program)} ]]; then
  _${shellName(program)} "$@"
else
  compdef _${shellName(program)} ${program}
fi
`;
}
