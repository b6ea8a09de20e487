import { describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG, loadConfig, parseConfig } from '../../src/config/config.js';

describe('configuration', () => {
  it('works with no file at all (embedded default)', () => {
    expect(loadConfig(undefined)).toEqual(DEFAULT_CONFIG);
  });

  it('overrides defaults key by key', () => {
    const c = parseConfig('{"dataDir":"/srv/us","logLevel":"debug"}', 'x.json');
    expect(c.dataDir).toBe('/srv/us');
    expect(c.logLevel).toBe('debug');
    expect(c.logFile).toBeUndefined();
  });

  it('refuses wrong types and values, naming the key', () => {
    expect(() => parseConfig('{"dataDir":"relative/path"}', 'c.json')).toThrow(/c\.json: "dataDir" must be an absolute path/);
    expect(() => parseConfig('{"logLevel":"loud"}', 'c.json')).toThrow(/"logLevel" must be one of/);
    expect(() => parseConfig('[1,2]', 'c.json')).toThrow(/must be a JSON object/);
    expect(() => parseConfig('{"dataDir":5}', 'c.json')).toThrow(/"dataDir" must be an absolute path, got 5/);
  });
});
