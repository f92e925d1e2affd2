// @ts-check
import eslint from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.cache/', '.data/', 'test-artifacts/'] },
  eslint.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: globals.node,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      // node:test's describe/it return promises the runner itself tracks.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'before', 'after'] }] },
      ],
    },
  },
  {
    // Workflows run in Temporal's deterministic sandbox: only activity *types* may be imported
    // from activities/, and nothing that performs I/O.
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['../activities', '../activities/*', '../activities/**'], allowTypeImports: true, message: 'workflows may import only types from activities/' },
            { group: ['node:*', 'fs', 'path', 'crypto', 'child_process', 'os', 'net', 'http', 'https'], message: 'workflows must not use Node APIs' },
            { group: ['@temporalio/activity', '@temporalio/client', '@temporalio/worker'], message: 'workflows may use only @temporalio/workflow and @temporalio/common' },
          ],
        },
      ],
      // zod is loaded once per worker thread and shared by every workflow on it
      // (workers/workflow-bundle-options.ts): nothing here may write to its global state.
      'no-restricted-syntax': [
        'error',
        {
          selector: "CallExpression[callee.type='MemberExpression'][callee.property.name=/^(meta|describe|register)$/]",
          message: "zod's registry is shared by every workflow on a worker thread: a schema's .meta/.describe/.register would outlive the workflow",
        },
        {
          selector: "MemberExpression[object.name='z'][property.name=/^(config|globalRegistry|registry|lazy)$/]",
          message: "zod's global config and registry are shared by every workflow on a worker thread; recursive (lazy) schemas keep parse state in it",
        },
      ],
    },
  },
  { files: ['**/*.mjs'], ...tseslint.configs.disableTypeChecked },
);
