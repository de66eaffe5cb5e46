/**
 * How to start a worker thread on one of our own modules, both when running the compiled `dist/`
 * and when running the TypeScript sources through tsx (tests, development). Node does not pass a
 * worker's entry file through loader hooks, but a dynamic import made from an eval'd entry goes
 * through them, so from source the entry registers tsx first and then imports the module.
 */
export function workerEntry(callerUrl: string, name: string): { entry: URL | string; eval: boolean } {
  if (!callerUrl.endsWith('.ts')) return { entry: new URL(`./${name}.js`, callerUrl), eval: false };
  const source = new URL(`./${name}.ts`, callerUrl).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  return {
    entry: `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(source)}); })`,
    eval: true,
  };
}
