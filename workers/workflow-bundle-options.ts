/**
 * How every bundle of keyops' workflows is built: `npm run build`'s, a worker's started from
 * source, and the test suite's. One definition, so that what the tests replay is what runs.
 */
export const workflowsPath = require.resolve('../workflows');

/**
 * Modules whose scope runs once per reusable V8 context and is shared by every workflow in it,
 * instead of running again for each workflow the worker creates. zod's scope (hundreds of schema
 * classes) was a quarter of a worker's workflow-thread CPU in a profile of a fleet night, about
 * 25 ms per workflow. Sharing is safe while no workflow writes to zod's global state: the SDK
 * freezes only zod's global config (a write to it throws), not its registry's maps or its
 * classes' prototypes, so `.meta()`, `.describe()`, `.register()` or a recursive `z.lazy` schema
 * would carry state from one workflow to the next. ESLint forbids those in workflows/.
 */
export const preloadModules = [require.resolve('../workflows/shared-modules')];
