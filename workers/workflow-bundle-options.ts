/**
 * How every bundle of keyops' workflows is built: `npm run build`'s, a worker's started from
 * source, and the test suite's. One definition, so that what the tests replay is what runs.
 */
export const workflowsPath = require.resolve('../workflows');

/**
 * Modules whose scope runs once per reusable V8 context and is shared by every workflow in it,
 * instead of running again for each workflow the worker creates. zod's scope (hundreds of schema
 * classes) was a quarter of a worker's workflow-thread CPU in a profile of a fleet night, about
 * 25 ms per workflow. Sharing it is safe because no workflow changes zod's global state: its
 * config, locale or registry (`.meta()`, `.register()`), the per-workflow state the SDK warns
 * about; the SDK freezes what the module exports, so an attempt would throw, not leak.
 */
export const preloadModules = [require.resolve('../workflows/shared-modules')];
