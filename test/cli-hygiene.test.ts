import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { completionTree } from '../client/commands/completion';
import { ExitCode } from '../client/cli-error';
import { buildProgram } from '../client/main';
import { ROOT, keyops, runToEnd } from './helpers/child-process';

/** CLI hygiene (issue, part 5): closed pipes, scripts' --help, shell completion. No Temporal server needed. */

const noStackTrace = (text: string) => assert.doesNotMatch(text, /^\s+at .+\(.+:\d+:\d+\)$|^\s+at .+:\d+:\d+$/m, `stack trace in:\n${text}`);
const MAIN = join(ROOT, 'client/main.ts');
const dir = mkdtempSync(join(tmpdir(), 'keyops-cli-hygiene-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Both ways keyops' main module runs: as the ES-module entry tsx makes of it (the tests'
 * `keyops` helper), and as a CommonJS main like the built bin (dist/client/main.js). Only the
 * second showed the EPIPE crash: there the write's error event fires before main() returns.
 */
const LOADERS = [
  ['--import', 'tsx'],
  ['--require', 'tsx/cjs'],
];

/** `keyops ARGS | READER` in bash, with pipefail: the status is keyops' unless the reader fails. */
const pipeline = (loader: string[], args: string[], reader: string) =>
  runToEnd('bash', ['-c', `set -o pipefail; "$@" | ${reader}`, 'pipeline', process.execPath, ...loader, MAIN, ...args]);

describe('a closed pipe ends keyops quietly', () => {
  for (const loader of LOADERS) {
    for (const args of [['--help'], ['completion', 'bash']]) {
      it(`keyops ${args.join(' ')} | head -1, and | true (node ${loader.join(' ')})`, async () => {
        const head = await pipeline(loader, args, 'head -1');
        assert.equal(head.code, 0, head.stderr);
        assert.equal(head.stdout.split('\n').length, 2, head.stdout);
        assert.equal(head.stderr, '');
        // `true` reads nothing and exits before keyops writes: every write meets a closed pipe.
        const closed = await pipeline(loader, args, 'true');
        assert.equal(closed.code, 0, closed.stderr);
        assert.doesNotMatch(closed.stderr, /EPIPE|Unhandled 'error' event/);
        noStackTrace(closed.stderr);
        assert.equal(closed.stderr, '');
      });
    }
  }

  it('a command writing without end stops at the first write after head -1 exits, exit 0', async () => {
    // What `keyops runs | head -1` does with a long listing: many writes, the reader long gone.
    const script = `require('./client/output').endQuietlyOnClosedPipe();
      let i = 0;
      const more = () => { for (let n = 0; n < 100; n++) process.stdout.write('line ' + i++ + '\\n'); setImmediate(more); };
      more();`;
    const r = await runToEnd('bash', ['-c', 'set -o pipefail; "$@" | head -1', 'pipeline', process.execPath, '--require', 'tsx/cjs', '-e', script], { timeoutMs: 30_000 });
    assert.equal(r.signal, null, 'killed: it never noticed the closed pipe');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'line 0\n');
    assert.equal(r.stderr, '');
  });
});

describe('the stack scripts print their help and run nothing', () => {
  // Every command the scripts could reach for, faked: each one run leaves its name behind.
  const fakes = join(dir, 'fake-bin');
  const ran = join(dir, 'ran');
  spawnSync('mkdir', ['-p', fakes]);
  for (const name of ['keyops', 'npx', 'npm', 'node', 'go', 'temporal', 'bao', 'mariadb', 'psql', 'pg_ctl', 'sudo', 'apt-get']) {
    writeFileSync(join(fakes, name), `#!/bin/sh\necho ${name} "$@" >>'${ran}'\nexit 1\n`);
    chmodSync(join(fakes, name), 0o755);
  }
  const env = { PATH: `${fakes}:${process.env.PATH ?? ''}`, KEYOPS_DATA_DIR: join(dir, 'data'), KEYOPS_TEMPORAL_PORT: '7233', KEYOPS_CLUSTER_SHARDS: '4' };

  for (const [script, mustSay] of [
    ['temporal-dev.sh', ['Usage: ./temporal-dev.sh', 'data of `keyops init` (first start)', '`go install github.com/temporalio/cli/cmd/temporal@v1.5.1`', `[${ROOT}/.data]`, 'KEYOPS_PAYLOAD_KEY_FILE=$HOME/.keyops/payload.key']],
    ['temporal-cluster.sh', ['Usage: ./temporal-cluster.sh', '`up` starts it again', '`go install`', 'TEMPORAL_ADDRESS=127.0.0.1:7233', "Temporal's own server\nv1.29.1", '4 history shards', `[${ROOT}/.data]`]],
  ] as const) {
    for (const arg of ['--help', '-h', 'help']) {
      it(`./${script} ${arg}`, async () => {
        rmSync(ran, { force: true });
        const r = await runToEnd(join(ROOT, script), [arg], { env });
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, '', 'nothing on stderr (a "command not found" is a command the help text ran)');
        assert.equal(existsSync(ran) ? readFileSync(ran, 'utf8') : '', '', 'the help ran these commands');
        for (const text of mustSay) assert.ok(r.stdout.includes(text), `${arg} lacks ${JSON.stringify(text)}:\n${r.stdout}`);
        assert.doesNotMatch(r.stdout, /@[A-Z_]+@/, 'a placeholder left unfilled');
        assert.ok(!existsSync(join(dir, 'data')), '--help created the data directory');
      });
    }
  }

  it('--help works even with a setting that up would refuse', async () => {
    const r = await runToEnd(join(ROOT, 'temporal-dev.sh'), ['--help'], { env: { ...env, KEYOPS_TEMPORAL_PORT: 'seven' } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Usage: /);
  });

  it('no unquoted heredoc in either script holds a backtick (it would run what it quotes)', () => {
    for (const script of ['temporal-dev.sh', 'temporal-cluster.sh']) {
      const lines = readFileSync(join(ROOT, script), 'utf8').split('\n');
      for (let i = 0; i < lines.length; i++) {
        const open = /<<(-?)\s*([A-Za-z_][A-Za-z0-9_]*)\b/.exec(lines[i]!.replace(/<<</g, ''));
        if (!open) continue;
        const [, dash, word] = open;
        for (let j = i + 1; j < lines.length && (dash ? lines[j]!.replace(/^\t+/, '') : lines[j]) !== word; j++) {
          assert.doesNotMatch(lines[j]!, /(^|[^\\])`/, `${script}:${j + 1}: a backtick in the unquoted heredoc opened on line ${i + 1}`);
        }
      }
    }
  });
});

/** Runs `body` in a clean bash that has sourced `keyops completion bash`. */
function inBash(script: string, body: string) {
  return runToEnd('bash', ['--norc', '--noprofile', '-c', `source "$1" || exit 9\n${body}`, 'bash', script]);
}

/** Prints what _keyops offers for each line of words (the last word is the one being completed). */
const completeEach = (lines: string[][]) =>
  lines
    .map((words) => {
      const quoted = words.map((w) => `'${w.replace(/'/g, `'\\''`)}'`).join(' ');
      return `COMP_WORDS=(${quoted}); COMP_CWORD=${words.length - 1}; COMPREPLY=(); _keyops; echo "\${COMPREPLY[*]}"`;
    })
    .join('\n');

describe('keyops completion', () => {
  const bashFile = join(dir, 'keyops.bash');

  it('bash: passes bash -n and registers a completion for keyops', async () => {
    const r = await keyops(['completion', 'bash']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    writeFileSync(bashFile, r.stdout);
    const syntax = await runToEnd('bash', ['-n', bashFile]);
    assert.equal(syntax.code, 0, syntax.stderr);
    const registered = await inBash(bashFile, 'complete -p keyops');
    assert.equal(registered.code, 0, registered.stderr);
    assert.match(registered.stdout, /^complete .*-F _keyops keyops$/m);
  });

  it('bash: completes commands, subcommands, options and choices', async () => {
    const cases: [string[], string[]][] = [
      [['keyops', 'ke'], ['key']],
      [['keyops', 'key', 'ro'], ['rotate']],
      [['keyops', '--address', '127.0.0.1', 'backup', 'r'], ['restore', 'run']],
      [['keyops', 'key', 'rotate', '--w'], ['--wait']],
      [['keyops', 'key', 'rotate', '--js'], ['--json']], // a program option, accepted after the subcommand
      [['keyops', 'completion', ''], ['bash', 'zsh']],
      [['keyops', 'key', 'help', 'ro'], ['rotate']],
      [['keyops', '--namespace', 'k'], []], // a value, not a command
      [['keyops', '--namespace', '=', 'x', 'ke'], ['key']], // --namespace=x, as bash splits it
    ];
    const r = await inBash(bashFile, completeEach(cases.map(([words]) => words)));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const got = r.stdout.split('\n').slice(0, -1);
    cases.forEach(([words, want], i) => assert.deepEqual(got[i]?.split(' ').filter(Boolean).sort(), want, `keyops ${words.slice(1).join(' ')}<TAB>`));
  });

  it('bash: offers exactly the commands and options of the commander tree, at every level', async () => {
    const nodes = completionTree(buildProgram());
    assert.ok(nodes.length > 20, `only ${nodes.length} commands found`);
    const words = (path: string) => ['keyops', ...(path ? path.split(' ') : [])];
    const r = await inBash(bashFile, completeEach(nodes.flatMap((n) => [[...words(n.path), ''], [...words(n.path), '-']])));
    assert.equal(r.code, 0, r.stderr);
    const got = r.stdout.split('\n');
    nodes.forEach((n, i) => {
      let cmd = buildProgram();
      for (const name of n.path ? n.path.split(' ') : []) {
        const next = cmd.createHelp().visibleCommands(cmd).find((c) => c.name() === name);
        assert.ok(next, `no command ${name} in ${n.path}`);
        cmd = next;
      }
      const help = cmd.createHelp();
      const sub = help.visibleCommands(cmd).flatMap((c) => [c.name(), ...c.aliases()]);
      const offered = new Set(got[2 * i]?.split(' ').filter(Boolean));
      for (const name of sub) assert.ok(offered.has(name), `keyops ${n.path} <TAB> lacks ${name}`);
      const options = new Set(got[2 * i + 1]?.split(' ').filter(Boolean));
      for (const o of help.visibleOptions(cmd)) for (const f of [o.long, o.short]) if (f) assert.ok(options.has(f), `keyops ${n.path} -<TAB> lacks ${f}`);
    });
    assert.ok(nodes.some((n) => n.path === 'key rotate' && n.options.some((o) => o.flags.includes('--wait'))));
  });

  const zsh = spawnSync('zsh', ['--version']).error ? undefined : 'zsh';
  const noZsh = zsh ? false : 'zsh is not installed here: scripts/install-zsh.sh installs it (.ci/run does)';
  it('zsh: passes zsh -n', { skip: noZsh }, async () => {
    const r = await keyops(['completion', 'zsh']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^#compdef keyops$/m);
    const file = join(dir, '_keyops');
    writeFileSync(file, r.stdout);
    const syntax = await runToEnd('zsh', ['-n', file]);
    assert.equal(syntax.code, 0, syntax.stderr);
  });

  it('zsh: completes commands, subcommands, options and choices in an interactive zsh (zpty)', { skip: noZsh }, async () => {
    const r = await keyops(['completion', 'zsh']);
    assert.equal(r.code, 0, r.stderr);
    const script = join(dir, 'keyops-completion.zsh');
    writeFileSync(script, r.stdout);
    // Each line is typed into an interactive zsh with the script sourced after compinit, as the
    // --help says, then TAB; a widget prints the line as completion left it.
    const cases: [typed: string, completed: string][] = [
      ['keyops rep', 'keyops report '],
      ['keyops key rot', 'keyops key rotate '],
      ['keyops backup dr', 'keyops backup drill '],
      ['keyops report --si', 'keyops report --since '],
      ['keyops completion z', 'keyops completion zsh '],
      ['keyops --address 127.0.0.1 sch', 'keyops --address 127.0.0.1 schedule '],
    ];
    const driver = [
      'zmodload zsh/zpty',
      "zpty z 'zsh -f -i'",
      `zpty -w z ${JSON.stringify(`PS1='> '; autoload -Uz compinit; compinit -u -D; source ${script}`)}`,
      `zpty -w z 'show() { zle -I; print -r -- "LINE<$BUFFER>"; BUFFER=; }; zle -N show; bindkey "^X" show; print READY'`,
      "zpty -r z out '*READY*'",
      ...cases.flatMap(([typed], i) => [`zpty -w -n z $'${typed}\\t\\C-x'`, `zpty -r z out '*LINE<*>*'`, `print -r -- "CASE${i} \${\${out##*LINE<}%%>*}"`]),
      'zpty -d z',
    ].join('\n');
    const driverFile = join(dir, 'completion-driver.zsh');
    writeFileSync(driverFile, `${driver}\n`);
    const run = await runToEnd('zsh', ['-f', driverFile]);
    assert.equal(run.code, 0, run.stderr);
    const got = Object.fromEntries([...run.stdout.matchAll(/^CASE(\d+) (.*)$/gm)].map((m) => [Number(m[1]), m[2]]));
    assert.deepEqual(
      cases.map((_, i) => got[i]),
      cases.map(([, completed]) => completed),
      run.stdout,
    );
  });

  it('zsh: the script names every command with its description', async () => {
    const r = await keyops(['completion', 'zsh']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^#compdef keyops$/m);
    assert.match(r.stdout, /'key:[^']+'/);
    assert.match(r.stdout, /^\s+compdef _keyops keyops$/m);
  });

  it('an unknown shell is a usage error naming it, without a stack trace', async () => {
    const r = await keyops(['completion', 'fish']);
    assert.equal(r.code, ExitCode.usage);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /'fish'/);
    assert.match(r.stderr, /bash, zsh/);
    noStackTrace(r.stderr);
  });

  it('--help shows how to install it', async () => {
    const r = await keyops(['completion', '--help']);
    assert.equal(r.code, 0, r.stderr);
    for (const text of ['source <(keyops completion bash)', '~/.bashrc', '~/.zshrc', 'fpath']) assert.ok(r.stdout.includes(text), `--help lacks ${text}:\n${r.stdout}`);
  });
});

describe('every command teaches by example', () => {
  it('--help of every command shows an example that runs keyops', () => {
    const missing: string[] = [];
    const walk = (cmd: ReturnType<typeof buildProgram>, path: string[]) => {
      const subcommands = cmd.commands;
      if (subcommands.length === 0) {
        let help = '';
        cmd.configureOutput({ writeOut: (s) => (help += s), writeErr: (s) => (help += s) });
        cmd.outputHelp();
        const block = /^Examples?\b[^\n]*:\n((?: {2}.+\n?)+)/m.exec(help)?.[1] ?? '';
        // At least one line a reader can paste: keyops itself (after environment settings, if any).
        if (!block.split('\n').some((l) => /^ {2}(?:[A-Z_]+=\S+ )*(?:keyops |source <\(keyops )/.test(l))) missing.push(path.join(' '));
      }
      for (const sub of subcommands) walk(sub, [...path, sub.name()]);
    };
    walk(buildProgram(), ['keyops']);
    assert.deepEqual(missing, []);
  });
});
