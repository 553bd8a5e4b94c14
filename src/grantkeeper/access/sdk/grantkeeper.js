// grantkeeper browser SDK: an end user's own provider access tokens, connect and disconnect.
// An ES module with no dependencies and no build step:
//
//   import { GrantKeeper } from "https://vault.example.com/sdk/grantkeeper.js";
//   const gk = new GrantKeeper({ baseUrl: "https://vault.example.com", getSubjectToken: () => myLogin.idToken() });
//   const { access_token } = await gk.getAccessToken("google-mail");
//
// The refresh token never reaches the browser; this module only ever sees short-lived
// access tokens. Cookies are never sent (credentials: "omit").

const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const TYPES = {
  jwt: "urn:ietf:params:oauth:token-type:jwt",
  access_token: "urn:ietf:params:oauth:token-type:access_token",
};

/** An error answered by grantkeeper: `error` is the OAuth error or problem code. */
export class GrantKeeperError extends Error {
  constructor(status, error, description, body) {
    super(description ? `${error}: ${description}` : error);
    this.name = "GrantKeeperError";
    this.status = status;
    this.error = error;
    this.description = description;
    this.body = body;
  }
}

export class GrantKeeper {
  /**
   * @param {object} options
   * @param {string} options.baseUrl grantkeeper's public URL
   * @param {() => (string|Promise<string>)} options.getSubjectToken the signed-in user's token:
   *   a JWT from the app's login system, or an end-user token from the app's backend
   * @param {"jwt"|"access_token"|string} [options.subjectTokenType] default "jwt"; use
   *   "access_token" for end-user tokens (the full RFC 8693 URNs work too)
   */
  constructor({ baseUrl, getSubjectToken, subjectTokenType = "jwt" } = {}) {
    if (typeof baseUrl !== "string" || !baseUrl) throw new TypeError("baseUrl is required");
    if (typeof getSubjectToken !== "function") throw new TypeError("getSubjectToken must be a function");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.getSubjectToken = getSubjectToken;
    this.subjectTokenType = TYPES[subjectTokenType] || subjectTokenType;
  }

  async _subject() {
    const token = await this.getSubjectToken();
    if (typeof token !== "string" || !token) throw new TypeError("getSubjectToken returned no token");
    return token;
  }

  async _fetch(path, init) {
    const response = await fetch(this.baseUrl + path, {
      mode: "cors",
      credentials: "omit",
      cache: "no-store",
      ...init,
    });
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && (body.error || body.code)) || `http_${response.status}`;
      const description = body && (body.error_description || body.detail);
      throw new GrantKeeperError(response.status, error, description || "", body);
    }
    return body;
  }

  async _me(method, path, json) {
    const headers = { Authorization: `Bearer ${await this._subject()}` };
    const init = { method, headers };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    return this._fetch(path, init);
  }

  /**
   * The user's provider access token for an integration (RFC 8693 token exchange).
   * Resolves to the /oauth/token response: {access_token, issued_token_type, token_type,
   * expires_in, scope}.
   */
  async getAccessToken(integrationId, { scope, loginHint } = {}) {
    const form = new URLSearchParams({
      grant_type: TOKEN_EXCHANGE,
      subject_token: await this._subject(),
      subject_token_type: this.subjectTokenType,
      audience: integrationId,
      requested_token_type: TYPES.access_token,
    });
    if (scope !== undefined) form.set("scope", Array.isArray(scope) ? scope.join(" ") : scope);
    if (loginHint !== undefined) form.set("login_hint", loginHint);
    return this._fetch("/oauth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    });
  }

  /** Start a connect for the signed-in user: navigates the window to the provider. */
  async connect(integrationId, { returnTo } = {}) {
    if (typeof returnTo !== "string" || !returnTo) throw new TypeError("returnTo is required");
    const session = await this._me("POST", "/v1/me/connect-sessions", {
      integration_id: integrationId,
      return_to: returnTo,
    });
    window.location.assign(session.connect_url);
    return session;
  }

  /** The signed-in user's grants (the same objects as GET /v1/grants items). */
  async grants() {
    const body = await this._me("GET", "/v1/me/grants");
    return body.data;
  }

  /** Disconnect one of the user's grants (revoked at the provider where it can be). */
  async disconnect(grantId) {
    return this._me("DELETE", `/v1/me/grants/${encodeURIComponent(grantId)}`);
  }
}

export default GrantKeeper;
