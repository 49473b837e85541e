/* The page's elements by id: the ids are the page's interface to index.html, its CSS and the browser tests. */

export function byId(id) {
  return document.getElementById(id);
}
