// The console's one script: start the NHS.UK frontend's components (header menu, error summary focus, buttons).
import { initAll } from "./nhsuk-frontend.min.js";

initAll();
