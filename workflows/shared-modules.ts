/**
 * The modules the worker loads once per reusable V8 context and shares between workflows
 * (workers/workflow-bundle-options.ts says why). zod is named through a use of it: its package
 * declares itself free of side effects, so the bundler drops a bare `require('zod')` whose result
 * nothing reads, and the preload would load nothing.
 */
import { z } from 'zod';

// zod finishes setting itself up on first use: the first schema built puts its default locale and
// memoizer into its global config, and the first object schema records whether it may compile
// parsers. The SDK freezes the context's globals, zod's config among them, once the preload ends,
// after which those writes would throw in every workflow; so the first use happens here.
const ready = z.object({ ready: z.string().min(1) });
ready.parse({ ready: 'yes' });
ready.safeParse({ ready: '' });

export const sharedZod = z;
