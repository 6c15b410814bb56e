import type { Project } from '../core/projects.ts';

/** Projects and their quotas. */
export interface ProjectClient {
  listProjects(): Promise<Project[]>;
  getProject(name: string): Promise<Project>;
  createProject(request: {
    name: string;
    description?: string;
    config?: Record<string, string>;
  }): Promise<Project>;
  updateProject(
    name: string,
    change: { set?: Record<string, string>; unset?: string[]; description?: string },
  ): Promise<Project>;
  deleteProject(name: string): Promise<void>;
}

type Call = <T>(method: string, path: string, json?: unknown) => Promise<T>;

const enc = encodeURIComponent;

/** The project part of the client, over the same transport (project routes take no `?project=`). */
export function projectMethods(call: Call): ProjectClient {
  return {
    listProjects: () => call('GET', '/1.0/projects?recursion=1'),
    getProject: (name) => call('GET', `/1.0/projects/${enc(name)}`),
    createProject: (request) => call('POST', '/1.0/projects', request),
    updateProject: (name, change) => {
      const body: { config?: Record<string, string>; unset?: string[]; description?: string } = {};
      if (change.set && Object.keys(change.set).length > 0) body.config = change.set;
      if (change.unset && change.unset.length > 0) body.unset = change.unset;
      if (change.description !== undefined) body.description = change.description;
      return call('PATCH', `/1.0/projects/${enc(name)}`, body);
    },
    async deleteProject(name) {
      await call('DELETE', `/1.0/projects/${enc(name)}`);
    },
  };
}
