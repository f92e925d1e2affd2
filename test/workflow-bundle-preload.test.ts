import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';
import { describe, it } from 'node:test';
import { workflowBundlePath } from './helpers/temporal';

/**
 * The bundle's preload hook is what makes zod load once per worker thread instead of once per
 * workflow (workers/workflow-bundle-options.ts). The SDK's reusable V8 context evaluates the
 * bundle, calls the hook, and shares every module the hook put into the module cache; a hook that
 * loads nothing (the bundler drops a require of a side-effect-free package whose result nothing
 * reads) would cost nothing visible but CPU, so it is checked here the way the SDK drives it.
 */
describe('workflow bundle preload', () => {
  it('loads zod, with its global setup done, before any workflow exists', () => {
    const moduleCache: Record<string, unknown> = {};
    const context = vm.createContext({ __webpack_module_cache__: moduleCache, TextEncoder, TextDecoder });
    new vm.Script(readFileSync(workflowBundlePath(), 'utf8')).runInContext(context);
    const zodModules = () => Object.keys(moduleCache).filter((id) => id.startsWith('./node_modules/zod/'));
    assert.deepEqual(zodModules(), [], 'zod is not loaded by evaluating the bundle alone');

    vm.runInContext('__TEMPORAL__.preloadModules()', context);
    // zod's schemas module, whichever of its builds (ESM from source, CommonJS from dist) was bundled.
    assert.ok(
      zodModules().some((id) => /\/zod\/v4\/classic\/schemas\.c?js$/.test(id)),
      `the preload loaded zod's schemas (it loaded: ${zodModules().join(', ') || 'no zod module'})`,
    );
    // What zod writes on first use, before the SDK freezes the shared modules' state.
    const config = vm.runInContext('Object.keys(globalThis.__zod_globalConfig ?? {}).sort()', context) as string[];
    assert.deepEqual([...config], ['localeError', 'memoizer']);
  });
});
