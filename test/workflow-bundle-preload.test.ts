import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';
import { describe, it } from 'node:test';
import { workflowBundlePath } from './helpers/temporal';

type SafeParse = (value: unknown) => { success: boolean; error?: { issues: { message: string }[] } };

/**
 * The bundle's preload hook is what makes zod load once per worker thread instead of once per
 * workflow (workers/workflow-bundle-options.ts). The SDK's reusable V8 context evaluates the
 * bundle, calls the hook, shares every module the hook put into the module cache and freezes the
 * context's globals; each workflow then imports the workflows with the shared modules in hand.
 * A hook that loads nothing (the bundler drops a require of a side-effect-free package whose result
 * nothing reads), or workflows that import another build of zod, would cost nothing visible but
 * CPU, so this drives the bundle the same way and looks.
 */
describe('workflow bundle preload', () => {
  it('loads zod once, before any workflow, and the workflows use that zod after the freeze', () => {
    const moduleCache: Record<string, { exports: Record<string, unknown> }> = {};
    const context = vm.createContext({ __webpack_module_cache__: moduleCache, TextEncoder, TextDecoder });
    new vm.Script(readFileSync(workflowBundlePath(), 'utf8')).runInContext(context);
    const zodModules = () => Object.keys(moduleCache).filter((id) => id.includes('/node_modules/zod/'));
    assert.deepEqual(zodModules(), [], 'zod is not loaded by evaluating the bundle alone');

    vm.runInContext('__TEMPORAL__.preloadModules()', context);
    // zod's schemas module, whichever of its builds (ESM from source, CommonJS from dist) was bundled.
    assert.ok(
      zodModules().some((id) => /\/zod\/v4\/classic\/schemas\.c?js$/.test(id)),
      `the preload loaded zod's schemas (it loaded: ${zodModules().join(', ') || 'no zod module'})`,
    );
    // What zod writes into its global config on first use, which the SDK then freezes.
    const config = vm.runInContext('Object.keys(globalThis.__zod_globalConfig ?? {}).sort()', context) as string[];
    assert.deepEqual([...config], ['localeError', 'memoizer']);
    const preloaded = zodModules();

    vm.runInContext('Object.freeze(globalThis.__zod_globalConfig); Object.freeze(globalThis.__zod_globalRegistry)', context);
    vm.runInContext('__TEMPORAL__.importWorkflows()', context);
    assert.deepEqual(
      zodModules().filter((id) => !preloaded.includes(id)),
      [],
      'the workflows loaded no zod module of their own',
    );
    const inputModule = Object.entries(moduleCache).find(([id]) => /\/workflows\/workflow-input\.[jt]s$/.test(id))?.[1];
    assert.ok(inputModule, 'the workflows loaded workflows/workflow-input');
    const databaseId = inputModule.exports.databaseIdSchema as { safeParse: SafeParse };
    const night = inputModule.exports.dateSchema as { safeParse: SafeParse };
    // A failing parse reads the locale from the frozen config; a passing one compiles a check.
    assert.match(databaseId.safeParse('../etc').error?.issues[0]?.message ?? '', /1 to 63 characters/);
    assert.equal(databaseId.safeParse('shop').success, true);
    assert.equal(night.safeParse('2026-13-45').error?.issues[0]?.message, 'not a calendar date');
  });
});
