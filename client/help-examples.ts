/** The "Examples:" block every command's --help ends with: what a first-time operator types. */
export const examples = (...lines: string[]): string => `\nExamples:\n${lines.map((line) => `  ${line}`).join('\n')}\n`;
