export const message = 'Hello from devgate';
